"""`funcnet report`."""
from __future__ import annotations
from funcnet.cli._lazy import lazy_module

report = lazy_module("funcnet.report")



# ---------------------------------------------------------------------------- CLI
def _cmd_report(args) -> int:
    path = report.write_report(args.results_dir, args.out)
    print(f"report: {path}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML page (and PNG/SVG figures) of a results folder")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="folder written by `funcnet explore` or the experiments")
    p.add_argument("--out", default=None, help="HTML file to write (default: RESULTS_DIR/report.html)")
    p.set_defaults(func=_cmd_report)
