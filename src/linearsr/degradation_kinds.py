"""The vocabulary of degradations, without torch, so that the command line can offer it as choices and
parse it while `linearsr --help` still imports nothing heavy.

- KINDS: how a training LR image is made from its HR photo (degradations.py); degradations.KINDS is this tuple.
- LEVELS: the three hand-made blind estimates (degradation_level.py) that conditioned models up to v0.3, in the
  order of their (B, 3) levels tensor.
- PARAMS: the degradation vector of the parameters the training pipeline actually drew (blur widths, resize
  bottleneck, noise levels and kind, JPEG qualities, final sinc filter, second order), each normalised to
  [0, 1] with 0 for a plain bicubic input (datasets/degradation_params.degradation_vector says how). Models
  with `degradation_vector: params` are conditioned on it: the true vector in training, the degradation
  estimator's prediction from the whole LR image at inference.
- `parse_degradation`: a user's override of either, by name, plus two words for the whole vector: "clean"
  (every value 0) and "unknown" (the learned "don't know" value, i.e. blind).
"""

KINDS = ("bicubic", "mild", "realistic")
LEVELS = ("noise", "blur", "jpeg")
PARAMS = ("blur", "blur2", "resize", "noise", "noise1", "poisson", "jpeg", "jpeg1", "sinc", "second_order")
WHOLE = ("clean", "unknown")  # override words that set the whole vector
UNKNOWN = float("nan")  # an override value (and a vector entry) meaning "not known": the model's learned value


def parse_degradation(text: str) -> dict[str, float]:
    """A user's override such as "noise=0.5,jpeg=0", "clean" or "unknown,jpeg=0.8": the named values replace
    the estimated ones; a whole-vector word applies first. Names of both vocabularies are accepted here; the
    model says in one line when a name is not one of its own."""
    out: dict[str, float] = {}
    names = sorted(set(LEVELS) | set(PARAMS))
    for item in filter(None, (p.strip() for p in str(text).split(","))):
        if item in WHOLE:
            out = {item: 0.0, **out}
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise ValueError(f"degradation override {item!r}: use clean, unknown or name=value with names "
                             f"{', '.join(names)}")
        if value.strip() == "unknown":
            out[name] = UNKNOWN
            continue
        try:
            level = float(value)
        except ValueError:
            raise ValueError(f"degradation override {item!r}: {value!r} is not a number") from None
        if not 0 <= level <= 4:
            raise ValueError(f"degradation override {item!r}: values lie in [0, 4] (the vector's in [0, 1])")
        out[name] = level
    if len(set(out) & set(WHOLE)) > 1:
        raise ValueError("degradation override: clean and unknown exclude each other")
    return out
