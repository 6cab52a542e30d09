"""/v1/fine_tuning/alpha/graders/run and /validate through the official openai SDK, on the fake inference process."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import Server, fake_env, keyed_server

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"

EXACT = {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
         "reference": "{{ item.reference_answer }}", "operation": "eq"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from keyed_server(tmp_path_factory, "graders", TUNEFORGE_PYTHON_GRADERS="1")


def test_run_string_check_parses_in_the_sdk(sdk):
    graders = sdk.fine_tuning.alpha.graders
    hit = graders.run(grader=EXACT, model_sample="Paris", item={"reference_answer": "Paris"})
    miss = graders.run(grader=EXACT, model_sample="Lyon", item={"reference_answer": "Paris"})
    assert (hit.reward, miss.reward) == (1.0, 0.0)
    assert hit.metadata.name == "exact" and hit.metadata.type == "string_check"
    assert hit.metadata.errors.formula_parse_error is False and hit.metadata.execution_time >= 0
    assert hit.sub_rewards == {} and hit.api_model_grader_token_usage_per_model == {}


def test_run_multi_with_a_score_model_answered_by_the_inference_process(sdk):
    # The fake inference process echoes the last user message, so the "judge" answers {"result": <item.score>}.
    judge = {"type": "score_model", "name": "judge", "model": BASE, "range": [0, 10],
             "input": [{"role": "user", "content": '{"result": {{ item.score }}}'}]}
    grader = {"type": "multi", "name": "mix", "graders": {"exact": EXACT, "judge": judge},
              "calculate_output": "0.5 * exact + 0.05 * judge"}
    result = sdk.fine_tuning.alpha.graders.run(grader=grader, model_sample="Paris",
                                               item={"reference_answer": "Paris", "score": 7})
    assert result.sub_rewards == {"exact": 1.0, "judge": 7.0}
    assert result.reward == pytest.approx(0.5 + 0.35)
    assert result.metadata.sampled_model_name == BASE and result.metadata.token_usage > 0
    assert BASE in result.api_model_grader_token_usage_per_model


def test_run_python_grader_when_the_operator_enabled_it(sdk):
    source = "def grade(sample, item):\n    return float(sample['output_text'] == item['reference_answer'][::-1])\n"
    result = sdk.fine_tuning.alpha.graders.run(grader={"type": "python", "name": "py", "source": source},
                                               model_sample="olleh", item={"reference_answer": "hello"})
    assert result.reward == 1.0


def test_validate_returns_the_normalised_grader(sdk):
    judge = {"type": "score_model", "name": "judge", "model": BASE,
             "input": [{"role": "user", "content": "{{ sample.output_text }}"}]}
    validated = sdk.fine_tuning.alpha.graders.validate(grader=judge)
    assert validated.grader.type == "score_model" and validated.grader.range == [0.0, 1.0]


@pytest.mark.parametrize(("grader", "param"), [
    ({**EXACT, "operation": "equals"}, "grader.operation"),
    ({"type": "multi", "name": "m", "graders": {"a": EXACT}, "calculate_output": "__import__('os')"},
     "grader.calculate_output"),
    ({"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "cosine"},
     "grader.evaluation_metric"),
])
def test_invalid_graders_are_400s_naming_the_field(sdk, grader, param):
    for call in (lambda: sdk.fine_tuning.alpha.graders.validate(grader=grader),
                 lambda: sdk.fine_tuning.alpha.graders.run(grader=grader, model_sample="x")):
        with pytest.raises(openai.BadRequestError) as error:
            call()
        assert error.value.body["param"] == param and error.value.body["code"] == "invalid_grader"


def test_a_grader_model_the_org_cannot_use_is_a_400(sdk):
    judge = {"type": "score_model", "name": "judge", "model": "ft:nobody:x", "input": [{"role": "user", "content": "1"}]}
    with pytest.raises(openai.BadRequestError) as error:
        sdk.fine_tuning.alpha.graders.run(grader={"type": "multi", "name": "m", "graders": {"j": judge},
                                                  "calculate_output": "j"}, model_sample="x")
    assert error.value.body["param"] == "grader.graders.j.model"


def test_graders_need_an_api_key(server):
    response = httpx.post(server.url + "/v1/fine_tuning/alpha/graders/validate", json={"grader": EXACT})
    assert response.status_code == 401


def test_python_graders_are_refused_unless_the_operator_enables_them(tmp_path):
    (tmp_path / "data").mkdir()
    server = Server(tmp_path / "data", workers=0, env=fake_env()).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"), max_retries=0)
        with pytest.raises(openai.BadRequestError) as error:
            client.fine_tuning.alpha.graders.run(
                grader={"type": "python", "name": "py", "source": "def grade(s, i):\n    return 1.0"}, model_sample="x")
        assert "TUNEFORGE_PYTHON_GRADERS=1" in error.value.body["message"]
    finally:
        server.stop()
