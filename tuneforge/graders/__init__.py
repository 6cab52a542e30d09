"""OpenAI-style graders: score a model's answer to a dataset row (reinforcement fine-tuning, graders API).

    from tuneforge.graders import validate_grader, run_grader
    spec = validate_grader({"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
                            "reference": "{{ item.reference_answer }}", "operation": "eq"}, python_enabled=False)
    run_grader(spec, "Paris", {"reference_answer": "Paris"})["reward"]  # 1.0

spec.py checks a grader object; templates.py fills `{{ item.x }}` / `{{ sample.output_text }}`; formula.py
evaluates a multi grader's calculate_output; similarity.py holds the text_similarity metrics; sandbox.py
runs a python grader in a separate process without network; run.py grades one sample. Pure Python: the
web service imports this package, and it never imports torch (a score_model grader asks the caller's
`generate(model, messages, sampling_params)` for the model's answer).
"""

from tuneforge.graders.run import run_grader
from tuneforge.graders.sandbox import SandboxUnavailable
from tuneforge.graders.spec import GraderError, validate_grader

__all__ = ["GraderError", "SandboxUnavailable", "run_grader", "validate_grader"]
