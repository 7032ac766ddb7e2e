"""``flowtie evaluate``: every method by default, flowtie included where
PyTorch is installed, and a table whose numbers carry their units."""

import importlib.util
import os

import numpy as np
from fields import periodic_field, triplet_from

import flowtie_fast as ft
from flowtie_fast import cli
from flowtie_fast.evaluation.evaluate import evaluate, format_table


def write_cases(folder):
    """A triplet with a measured gradient and one without, both with truth."""
    pixel = (0.2, 0.25)
    phi, intensity, didz, grad = periodic_field(shape=(32, 30), pixel=pixel, contrast=0.3)
    t = triplet_from(intensity, didz, 20.0, pixel, 300e3)
    common = dict(dz=(20.0, 20.0), scan_step=pixel, energy=300e3, phase_gt=phi)
    ft.save(folder / "a_with_gradient.npz",
            ft.Dataset(*t.planes, gradient=grad, meta={"material": "X", "thickness": 12.5},
                       **common))
    ft.save(folder / "b_images.npz",
            ft.Dataset(*t.planes, meta={"material": "X", "thickness": 25.0}, **common))


def test_every_method_by_default_with_units(tmp_path, capsys):
    write_cases(tmp_path)
    table = tmp_path / "table.md"
    assert cli.main(["evaluate", str(tmp_path), "--repeats", "1", "-o", str(table)]) == 0
    out = capsys.readouterr().out
    torch = importlib.util.find_spec("torch") is not None
    methods = ["tie-uniform", "tie", "tie-exact", "gd", "icom"] + (["flowtie"] if torch else [])
    text = table.read_text()
    head = next(line for line in text.splitlines() if line.startswith("| case"))
    for m in methods:
        assert f"| {m} MSE (NMSE)" in head or f" {m} MSE (NMSE) |" in head, head
    if not torch:
        assert "flowtie: skipped" in out
    assert "MSE in rad²" in text and "dimensionless" in text and "thickness (Å)" in head
    assert "| X | 12.5 |" in text and "| X | 25.0 |" in text
    assert "best of 1 warm runs" in text and "nm" not in text.replace("NMSE", "")
    # icom and flowtie need the measured gradient: a dash on the file of images alone
    row = next(line for line in text.splitlines() if "b_images.npz" in line)
    assert row.count(" - |") == (2 if torch else 1)
    assert "12.5 Å" in out  # the progress lines use Å too


def test_format_table_marks_a_fallback():
    rows = [{"case": "c.npz", "material": "X", "thickness": 10.0, "method": m, "mse": 0.1,
             "nmse": 0.5, "time_ms": 1.0, "repeats": 3,
             "fallback": "tie" if m == "flowtie" else None} for m in ("tie", "flowtie")]
    text = format_table(rows)
    assert "(0.500)†" in text and "returned the classical phase" in text
    assert "best of 3 warm runs" in text


def test_library_default_is_unchanged_and_raises_without_gradient(tmp_path):
    write_cases(tmp_path)
    rows = evaluate(tmp_path / "a_with_gradient.npz", repeats=1)
    assert [r["method"] for r in rows] == ["tie-uniform", "tie", "tie-exact", "gd", "icom"]
    rows = evaluate(tmp_path, methods=("tie", "icom"), repeats=1, skip_without_gradient=True)
    assert [(r["case"], r["method"]) for r in rows] == [
        ("a_with_gradient.npz", "tie"), ("a_with_gradient.npz", "icom"), ("b_images.npz", "tie")]
    assert all(np.isfinite(r["time_ms"]) for r in rows)


def test_a_method_given_twice_is_refused_before_anything_is_printed(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "tie"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--methods: each method once, got 'tie' more than once" in err


def test_an_unreadable_case_is_refused_before_any_case_is_solved(tmp_path, capsys):
    """A damaged file among the cases was found only when its turn came, after
    the cases before it had been solved and their rows were thrown away."""
    write_cases(tmp_path)
    (tmp_path / "c_damaged.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "--repeats", "1"]) == 2
    out, err = capsys.readouterr()
    assert "c_damaged.npz" in err and "NMSE" not in out


def test_a_case_given_twice_is_refused_before_any_case_is_solved(tmp_path, capsys):
    """`flowtie evaluate DIR DIR/a.npz`, a link to a case in its folder, or
    `flowtie train DIR DIR` counted the case twice (its rows twice in the
    table, twice the weight in training) without a word."""
    import pytest

    from flowtie_fast.evaluation.evaluate import case_files

    write_cases(tmp_path)
    one = tmp_path / "b_images.npz"
    for given, twice in (([tmp_path, tmp_path], tmp_path / "a_with_gradient.npz"),
                         ([tmp_path, one], one), ([one, str(one)], one)):
        with pytest.raises(ft.InputError, match=rf"^paths: '{twice}' is given twice; expected "
                                                 "each case once$"):
            case_files(given)
    (tmp_path / "c_link.npz").symlink_to(one)
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"flowtie evaluate: error: paths: '{tmp_path / 'c_link.npz'}' is given twice "
                   f"(also as '{one}'); expected each case once"], err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ft.InputError, match=rf"^paths: no .npz/.h5 files in '{empty}'$"):
        case_files(empty)


def test_a_case_refused_when_its_turn_comes_is_named(tmp_path, capsys):
    """A case whose planes are refused (a zero row) said what was wrong but
    not in which of the folder's files."""
    write_cases(tmp_path)
    ds = ft.load(tmp_path / "b_images.npz")
    zero = np.array(ds.zero)
    zero[5] = 0
    ft.save(tmp_path / "c_dropped_row.npz",
            ft.Dataset(ds.minus, zero, ds.plus, dz=ds.dz, scan_step=ds.scan_step,
                       energy=ds.energy, phase_gt=ds.phase_gt))
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: c_dropped_row.npz: zero: row 5" in err, err


def test_a_file_s_text_reaches_neither_the_terminal_nor_the_table_raw(tmp_path, capsys):
    """A material of 'Ga<ESC>[2J...<newline>FAKE | row' cleared the screen in
    evaluate and put a row of its own into the Markdown table."""
    write_cases(tmp_path)
    ds = ft.load(tmp_path / "b_images.npz")
    ft.save(tmp_path / "b_images.npz",
            ft.Dataset(ds.minus, ds.zero, ds.plus, dz=ds.dz, scan_step=ds.scan_step,
                       energy=ds.energy, phase_gt=ds.phase_gt,
                       meta={"material": "Ga\x1b[2J\nFAKE | row", "thickness": 25.0}),
            overwrite=True)
    table = tmp_path / "t.md"
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "--repeats", "1",
                     "-o", str(table)]) == 0
    out = capsys.readouterr().out
    text = table.read_text()
    assert "\x1b" not in out and "\x1b" not in text
    row = next(line for line in text.splitlines() if "FAKE" in line)
    assert row.count(" | ") == 4 and "\\x1b[2J FAKE \\| row" in row  # five cells, escaped


def test_a_file_name_that_is_not_utf8_is_escaped_in_what_is_written(tmp_path, capsys):
    """A Latin-1 name from an acquisition PC ('caf\\xe9.npz'): evaluate ran every
    case and then could not write its table, reconstruct -o x.h5 failed after
    the solve ('surrogates not allowed'), and an .npz kept a source text that
    no later writer could encode."""
    import pytest

    h5py = pytest.importorskip("h5py")
    write_cases(tmp_path)
    latin = tmp_path / os.fsdecode(b"caf\xe9.npz")
    (tmp_path / "b_images.npz").rename(latin)
    (tmp_path / "a_with_gradient.npz").unlink()
    table = tmp_path / "t.md"
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "--repeats", "1",
                     "-o", str(table)]) == 0
    assert "| caf\\udce9.npz |" in table.read_text()
    out = tmp_path / "out.h5"
    assert cli.main(["reconstruct", str(latin), "--method", "tie", "-o", str(out)]) == 0
    with h5py.File(out, "r") as f:
        source = f.attrs["source"]
    assert str(source).endswith("caf\\xe9.npz")
    capsys.readouterr()


def test_named_gradient_methods_skip_cases_without_a_gradient(tmp_path, capsys):
    """`--methods tie icom` over a folder with a triplet of images (no
    gradient) ran the cases before it, then stopped with an error and wrote
    no table; as with the default methods, icom skips that case, saying so."""
    write_cases(tmp_path)
    out_md = tmp_path / "table.md"
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "icom", "--repeats", "1",
                     "-o", str(out_md)]) == 0
    out, _ = capsys.readouterr()
    assert "b_images.npz" in out and "icom skipped (no measured gradient)" in out
    table = out_md.read_text()
    assert "a_with_gradient.npz" in table and "b_images.npz" in table
    # no case with a gradient at all: an error, not an empty table and exit 0
    (tmp_path / "a_with_gradient.npz").unlink()
    assert cli.main(["evaluate", str(tmp_path), "--methods", "icom", "--repeats", "1"]) == 2
    _, err = capsys.readouterr()
    assert "methods: icom need a measured phase gradient, which none of the cases holds" in err


def test_a_flat_ground_truth_reads_undefined_not_nan(tmp_path, capsys):
    """A file whose phase_gt is flat printed "NMSE nan" and exited 0."""
    from flowtie_fast.evaluation.evaluate import nmse_text

    assert nmse_text(float("nan")) == "undefined (flat ground truth)"
    assert nmse_text(0.25) == "0.250" and nmse_text(5e8, ".4g") == "5e+08"
    assert nmse_text(float("inf")) == "inf"
    write_cases(tmp_path)
    ds = ft.load(tmp_path / "b_images.npz")
    flat = tmp_path / "flat" / "c_flat.npz"
    flat.parent.mkdir()
    ft.save(flat, ft.Dataset(ds.minus, ds.zero, ds.plus, dz=ds.dz, scan_step=ds.scan_step,
                             energy=ds.energy, phase_gt=np.zeros_like(ds.phase_gt)))
    assert cli.main(["evaluate", str(flat.parent), "--methods", "tie", "--repeats", "1"]) == 0
    out, _ = capsys.readouterr()
    assert "nan" not in out and "undefined (flat ground truth)" in out
