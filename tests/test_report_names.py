"""One name per concept (issue 13): verify and rewrite each return their own report class; the old name stays."""

from __future__ import annotations


def test_verify_and_rewrite_reports_have_distinct_names_and_keep_the_old_one():
    from ckptio.rewrite import Report as OldRewriteReport
    from ckptio.rewrite import RewriteReport
    from ckptio.verify import Report as OldVerifyReport
    from ckptio.verify import VerifyReport

    assert OldVerifyReport is VerifyReport and OldRewriteReport is RewriteReport
    assert VerifyReport is not RewriteReport
    assert repr(VerifyReport()).startswith("VerifyReport(")
