"""Every option of every ``flowtie`` command says what it does and its default."""

import argparse

import pytest

import flowtie_fast as ft
from flowtie_fast import cli


def commands():
    parser = cli._parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subs) == 1
    return parser, subs[0].choices


def test_every_command_has_help_and_renders():
    parser, subs = commands()
    assert set(subs) == {"demo", "reconstruct", "simulate", "evaluate", "train"}
    parser.format_help()
    for name, sub in subs.items():
        assert sub.description, name
        sub.format_help()  # a stray % in a help text would raise here


@pytest.mark.parametrize("name", ["demo", "reconstruct", "simulate", "evaluate", "train"])
def test_every_option_has_help_and_shows_its_default(name):
    _, subs = commands()
    sub = subs[name]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name} {label}: no help"
        text = formatter._expand_help(action)
        flag = action.nargs == 0  # store_true and the like: absent means off
        if action.option_strings and not flag and not action.required:
            assert "default" in text, f"{name} {label}: no default in {text!r}"


def test_evaluate_runs_every_method_by_default():
    _, subs = commands()
    text = subs["evaluate"].format_help()
    assert "flowtie" in text and "default: all" in " ".join(text.split())
    args = cli._parser().parse_args(["evaluate", "somewhere"])
    assert args.methods is None  # resolved to every available method when it runs
    from flowtie_fast.evaluation.evaluate import available_methods

    assert set(available_methods()) >= {"tie-uniform", "tie", "tie-exact", "gd", "icom"}


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"flowtie_fast {ft.__version__}"
    assert ft.__version__ and ft.__version__[0].isdigit()
