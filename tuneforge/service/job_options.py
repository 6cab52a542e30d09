"""The `tuneforge` object of a job's create body: tuneforge's own settings beyond OpenAI's hyperparameters.

The openai SDK sends it with `extra_body={"tuneforge": {"lora_r": 32, "max_length": 1024}}`. Its keys are
the trainer's config keys (`tuneforge config` lists them) checked by the trainer's own `build_config`, as
strictly as the command line checks them, plus a few that steer the job rather than the trainer
(SERVICE_KEYS). Keys the job sets itself (the files, the model, the output folder) or that would reach
outside the job (a Python reward function, a file on the server) are refused, each naming the key.
"""

from __future__ import annotations

import re

from tuneforge.chat_templates import BUILTIN_TEMPLATES
from tuneforge.config import FIELDS, TrainConfig, build_config
from tuneforge.errors import UserError
from tuneforge.service.api_error import APIError

# Held to what the trainer would be given, so a bad value is a 400 at create time, not a failed job later.
SERVICE_KEYS = {
    "n_processes": "train on N processes (torchrun); the worker must have the devices for them",
    "evaluate": "after training, compare base zero-shot, few-shot and the fine-tune on the validation file and "
    "measure forgetting; the report becomes a result file (default true)",
    "shots": "few-shot examples (from the training file) in the comparison's prompts (default 4; 0: none)",
    "eval_limit": "compare on at most this many validation examples (default: all)",
    "on_forgetting_failure": "publish or block a fine-tune that fails the forgetting gate (default: the "
    "organisation's policy, else block)",
}
# Where the forgetting gate sits unless the job says otherwise: the demo's gates (docs/evaluation.md).
DEFAULT_GATES = {"max_forgetting": 5.0, "max_general_drop": 3.0}
COMPARE_KEYS = ("max_forgetting", "max_general_drop")
# Set by the job itself (its files, model, seed, hyperparameters, output and resume), or by `integrations`.
JOB_SET_KEYS = {
    "data": "training_file",
    "validation_data": "validation_file",
    "model": "model",
    "method": "method",
    "seed": "seed",
    "output": None,
    "resume": None,
    "save_every": None,
    "init_adapter": "model (an ft: model or one of its checkpoints)",
    "eval_data": "validation_file",
    "epochs": "hyperparameters.n_epochs",
    "batch_size": "hyperparameters.batch_size",
    "learning_rate": "hyperparameters.learning_rate_multiplier",
    "beta": "method.dpo.hyperparameters.beta",
    "report_to": "integrations",
    "project": "integrations",
    "run_name": "integrations",
    "grader": "method.reinforcement.grader",
}
# Would run code or read files on the server: a module:function reward, a model folder, a prompts file.
SERVER_SIDE_KEYS = ("reward", "reward_model", "forgetting_guard_prompts")
BUILTIN_REPLAY = ("builtin:pydoc", "builtin:self")
TRAINER_METHODS = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}


def _refuse(key: str, message: str) -> APIError:
    return APIError(400, message, code="invalid_tuneforge_option", param=f"tuneforge.{key}")


def check_options(raw: dict | None, method: str) -> dict:
    """The job's `tuneforge` options, checked for the job's method ("supervised", "dpo", "reinforcement");
    raises APIError 400 naming the first bad key. Returns them as given (the trainer coerces again)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise APIError(400, "tuneforge must be an object of settings", code="invalid_tuneforge_option", param="tuneforge")
    options = dict(raw)
    for key, value in options.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", key):
            raise _refuse(str(key)[:64], f"tuneforge: {str(key)[:64]!r} is not a setting name")
        if key in SERVICE_KEYS:
            _check_service_key(key, value)
        elif key in JOB_SET_KEYS:
            where = JOB_SET_KEYS[key]
            hint = f"; set it with {where}" if where else "; the service sets it for every job"
            raise _refuse(key, f"tuneforge.{key} cannot be set here{hint}")
        elif key in SERVER_SIDE_KEYS:
            raise _refuse(key, f"tuneforge.{key} names code or files on the server, which jobs may not do")
        elif key == "chat_template" and (not isinstance(value, str) or value not in BUILTIN_TEMPLATES):
            raise _refuse(key, f"tuneforge.chat_template must be one of {', '.join(BUILTIN_TEMPLATES)} (files on the "
                          "server cannot be named)")
        elif key == "replay" and value is not None and value not in BUILTIN_REPLAY:
            raise _refuse(key, f"tuneforge.replay must be one of {', '.join(BUILTIN_REPLAY)} (files on the server "
                          "cannot be named)")
        elif key not in FIELDS:
            # The trainer's own message, with its did-you-mean.
            try:
                build_config({key: value})
            except UserError as exc:
                raise _refuse(key, f"tuneforge: {exc.bare_message.removeprefix('config: ')}") from None
        elif isinstance(value, dict | list) and key not in ("columns", "lora_target_modules"):
            raise _refuse(key, f"tuneforge.{key}: expected a single value, got {type(value).__name__}")
    trainer_keys = {k: v for k, v in options.items() if k in FIELDS}
    try:
        # Stand-in file names: the checks are of the settings; the job's own files (and a reinforcement job's
        # grader, checked by the create route) are the worker's to pass.
        stand_ins = {"data": "training_file", "method": TRAINER_METHODS[method]}
        if method == "reinforcement":
            stand_ins["grader"] = "grader.json"
        build_config({**stand_ins, **trainer_keys})
    except UserError as exc:
        message = exc.bare_message.removeprefix("config: ")
        named = next((k for k in trainer_keys if re.search(rf"\b{re.escape(k)}\b", message)), None)
        raise APIError(400, f"tuneforge: {message}", code="invalid_tuneforge_option",
                       param=f"tuneforge.{named}" if named else "tuneforge") from None
    return options


def _check_service_key(key: str, value) -> None:
    if key == "evaluate" and not isinstance(value, bool):
        raise _refuse(key, "tuneforge.evaluate must be true or false")
    if key in ("n_processes", "shots", "eval_limit"):
        low = 0 if key == "shots" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low or value > 1024:
            raise _refuse(key, f"tuneforge.{key} must be a whole number from {low} to 1024")
    if key == "on_forgetting_failure" and value not in ("publish", "block"):
        raise _refuse(key, "tuneforge.on_forgetting_failure must be 'publish' or 'block'")


def trainer_overrides(options: dict) -> list[str]:
    """key=value arguments of `tuneforge train` for the trainer's keys among a job's options (the gates go to
    the comparison after training, not to the trainer: the run's own gate would measure twice)."""
    items = []
    for key, value in options.items():
        if key not in FIELDS or key in COMPARE_KEYS:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif value is None:
            text = "none"
        elif isinstance(value, list):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = ",".join(f"{k}:{v}" for k, v in value.items())
        else:
            text = str(value)
        items.append(f"{key}={text}")
    return items


def is_full(options: dict | None) -> bool:
    """Whether a job's options ask for full fine-tuning (its model is a whole model folder, not an adapter)."""
    value = (options or {}).get("full", TrainConfig().full)
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def gates(options: dict | None) -> dict:
    """The forgetting gates the comparison applies: the job's, else the service's defaults (None: no gate)."""
    return {key: (options or {}).get(key, DEFAULT_GATES[key]) for key in COMPARE_KEYS}
