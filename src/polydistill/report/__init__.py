"""The run report: `report.html` (self-contained) and `plots/*.png` for a `polydistill run` folder.

    from polydistill.report import write_report
    write_report(Path("runs/demo"))          # or: polydistill report runs/demo

`inputs` reads and checks the run folder, `tables` and `plots` turn it into rows and PNGs,
`template` lays the page out, `page` writes it.
"""

from polydistill.report.page import write_report

__all__ = ["write_report"]
