"""The names of the degradation kinds, kept apart from degradations.py (torch) so that the command line can
offer them as choices while `linearsr --help` still imports nothing heavy. degradations.KINDS is this tuple."""

KINDS = ("bicubic", "mild", "realistic")
