"""Figures and the self-contained HTML report of a results folder."""
from funcnet.report.html import render_html, write_report
from funcnet.report.plots import make_figures

__all__ = ["render_html", "write_report", "make_figures"]
