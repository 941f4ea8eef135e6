"""The report: runs gathered into rows and claims (:mod:`.build`), the claim checks
(:mod:`.claims`) on the statistics of :mod:`.verdicts`, tables (:mod:`.tables`), Markdown
(:mod:`.markdown`) and figures (:mod:`.figures`)."""
