"""The vocabulary of degradations, without torch, so that the command line can offer it as choices and
parse it while `linearsr --help` still imports nothing heavy.

- KINDS: how a training LR image is made from its HR photo (degradations.py); degradations.KINDS is this tuple.
- LEVELS: the three blind estimates that condition the model (degradation_level.py), in the order of its
  (B, 3) levels tensor, and `parse_degradation`, the parser of a user's override of them.
"""

KINDS = ("bicubic", "mild", "realistic")
LEVELS = ("noise", "blur", "jpeg")


def parse_degradation(text: str) -> dict[str, float]:
    """User override such as "noise=0.5,jpeg=0": the named levels replace the estimated ones."""
    out = {}
    for item in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in LEVELS:
            raise ValueError(f"degradation override {item!r}: use name=value with names {', '.join(LEVELS)}")
        try:
            level = float(value)
        except ValueError:
            raise ValueError(f"degradation override {item!r}: {value!r} is not a number") from None
        if not 0 <= level <= 4:
            raise ValueError(f"degradation override {item!r}: levels lie in [0, 4]")
        out[name] = level
    return out
