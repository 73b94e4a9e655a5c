"""What tests hand a command and read back: the open variant limits of a model trained for seconds, and its
stderr: its notes (the plan, warnings) start with "vggdeploy: ", a failure with
"error: "."""


def failure_lines(stderr: str) -> list[str]:
    """stderr less the notes: what a failure printed (one line for each problem)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("vggdeploy: ")]


# every variant limit of export and check opened: a model trained for seconds is far from its variants' floors
OPEN_VARIANT_LIMITS = [
    *("--int8-max-drop", "100", "--fp16-max-drop", "100", "--int8-min-agreement", "0", "--fp16-min-agreement", "0"),
    *("--int8-max-mean-diff", "100", "--fp16-max-mean-diff", "100"),
]
