"""A job's `integrations` (OpenAI's create body): [{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}]
checked here and mapped to the trainer's experiment tracking (tuneforge/tracking.py: `report_to=wandb`).

W&B is the only integration OpenAI defines, and the only one accepted: anything else is a 400 that names the
field and what is supported, never silently dropped. The trainer's W&B run is offline (files under the run
folder, `wandb sync` uploads them) unless the worker's environment sets WANDB_MODE, and it needs the
`wandb` package where the job trains (a job without it fails saying `pip install wandb`).
"""

from __future__ import annotations

from tuneforge.service.api_error import APIError

SUPPORTED_TYPES = ("wandb",)
WANDB_FIELDS = ("project", "name", "entity", "tags")
MAX_INTEGRATIONS = 1  # one run per job: two W&B runs of one training would log the same numbers twice
MAX_TAGS = 50
MAX_TEXT = 256


def _invalid(message: str, param: str) -> APIError:
    return APIError(400, message, code="invalid_integration", param=param)


def _text(value, param: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise _invalid(f"Missing required parameter: '{param}'.", param)
        return None
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"Invalid value for '{param}': expected a non-empty string.", param)
    if len(value) > MAX_TEXT:
        raise _invalid(f"Invalid value for '{param}': longer than {MAX_TEXT} characters.", param)
    return value


def _wandb(settings, param: str) -> dict:
    if not isinstance(settings, dict):
        raise _invalid(f"Invalid value for '{param}': expected an object with 'project'.", param)
    unknown = [key for key in settings if key not in WANDB_FIELDS]
    if unknown:
        raise _invalid(
            f"Unrecognized argument '{param}.{unknown[0]}'; a W&B integration takes {', '.join(WANDB_FIELDS)}.",
            f"{param}.{unknown[0]}",
        )
    tags = settings.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise _invalid(
                f"Invalid value for '{param}.tags': expected a list of at most {MAX_TAGS} strings.", f"{param}.tags"
            )
        tags = [_text(tag, f"{param}.tags[{i}]", required=True) for i, tag in enumerate(tags)]
    return {
        "project": _text(settings.get("project"), f"{param}.project", required=True),
        "name": _text(settings.get("name"), f"{param}.name"),
        "entity": _text(settings.get("entity"), f"{param}.entity"),
        "tags": tags,
    }


def parse_integrations(raw: list | None) -> list[dict]:
    """The create body's `integrations`, checked and normalised to OpenAI's job-object shape
    ([{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}]); [] for none. Raises APIError 400
    with `param` naming the offending field (e.g. `integrations[0].type`)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid("Invalid value for 'integrations': expected a list.", "integrations")
    if len(raw) > MAX_INTEGRATIONS:
        raise _invalid(
            f"Invalid value for 'integrations': at most {MAX_INTEGRATIONS} integration per job (got {len(raw)}).",
            "integrations",
        )
    parsed = []
    for index, item in enumerate(raw):
        param = f"integrations[{index}]"
        if not isinstance(item, dict):
            raise _invalid(f"Invalid value for '{param}': expected an object with 'type'.", param)
        kind = item.get("type")
        if kind not in SUPPORTED_TYPES:
            raise _invalid(
                f"Integration type {kind!r} is not supported; supported: {', '.join(SUPPORTED_TYPES)} "
                '(e.g. {"type": "wandb", "wandb": {"project": "my-project"}}).',
                f"{param}.type",
            )
        unknown = [key for key in item if key not in ("type", kind)]
        if unknown:
            raise _invalid(f"Unrecognized argument '{param}.{unknown[0]}'.", f"{param}.{unknown[0]}")
        parsed.append({"type": kind, kind: _wandb(item.get(kind), f"{param}.{kind}")})
    return parsed


def integration_overrides(integrations: list[dict]) -> dict[str, str]:
    """The trainer config keys (`key=value` of `tuneforge train`) that make the run log to the job's
    integrations: report_to, project and, when given, run_name (else the trainer names the run after its
    output folder, the job id, as OpenAI names W&B runs)."""
    overrides: dict[str, str] = {}
    for integration in integrations:
        if integration["type"] == "wandb":
            wandb = integration["wandb"]
            overrides["report_to"] = "wandb"
            overrides["project"] = wandb["project"]
            if wandb.get("name"):
                overrides["run_name"] = wandb["name"]
    return overrides


def integration_env(integrations: list[dict]) -> dict[str, str]:
    """Environment for the trainer child: what the trainer's config has no key for but W&B reads itself
    (WANDB_ENTITY: the team or user the run belongs to)."""
    env: dict[str, str] = {}
    for integration in integrations:
        if integration["type"] == "wandb" and integration["wandb"].get("entity"):
            env["WANDB_ENTITY"] = integration["wandb"]["entity"]
    return env
