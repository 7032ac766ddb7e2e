"""A CPU ``tie`` Plan in a process that imported PyTorch first, beside busy
programs: the worst per-process median over the same measurement
with flowtie_fast imported first, as ``scripts/busy_host.py`` measures it.

Each sample is fresh processes (the import order is a per-process fact) with
two normal-priority busy loops running beside them; kept short (2 processes
per order, at most ~3 s of solves each). 1 means no loss from the import
order; the goal is at most 1.5.
"""

import importlib.util
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "busy_host.py"


def _busy_host():
    spec = importlib.util.spec_from_file_location("busy_host", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BusyHost:
    """``tie`` at 256² on the CPU, torch imported first / flowtie_fast first."""

    timeout = 600
    repeat = 1
    number = 1

    def setup(self):
        if importlib.util.find_spec("torch") is None:
            raise NotImplementedError("PyTorch is not installed")
        if not _SCRIPT.exists():
            raise NotImplementedError("scripts/busy_host.py is not in this tree")
        import flowtie_fast

        # measure the flowtie_fast this benchmark imports (asv's build), not the checkout
        self.src = str(Path(flowtie_fast.__file__).resolve().parent.parent)

    def track_torch_first_worst_median_ratio(self):
        """Worst-of-processes median, torch first / flowtie_fast first, 2 busy neighbours."""
        return _busy_host().worst_ratio(size=256, solves=100, processes=2, busy=2,
                                        budget=3.0, src=self.src)

    track_torch_first_worst_median_ratio.unit = "ratio"
