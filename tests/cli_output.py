"""Reading a command's stderr in tests: its notes (the plan, warnings) start with "vggdeploy: ", a failure with
"error: "."""


def failure_lines(stderr: str) -> list[str]:
    """stderr less the notes: what a failure printed (one line for each problem)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("vggdeploy: ")]
