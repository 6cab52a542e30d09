"""Consistency and style, as a builder means them:

    tuneforge compare --data test.jsonl --adapter runs/demo --consistency 5 --style-regex '^[^!]*$'

For each of the first inputs, the model answers N times at temperature T (seeded), and once greedily
under each of P paraphrases of the input. Reported: agreement across samples (per input, the share of its
samples equal to its most common answer, averaged: 1.0 when the answers never vary), exact match over all
samples, format validity and the style check over all samples, the spread of answer length (per-input
standard deviation in tokens, averaged), and under paraphrase the share of answers equal to the greedy
answer on the original input.

Paraphrases come without a model: rule-based transformations of the last user turn (`TRANSFORMS`: casing
of sentence starts, end punctuation, whitespace, a greeting, a sign-off, synonym swaps from a small table),
two per paraphrase, chosen by seed; or a user's own set (`load_paraphrases`). They keep the content words
(names, numbers, ids), so the reference answer still holds.

The style check is the user's: a regex (searched), a JSON schema, or a Python file defining
`check(answer: str) -> bool`, run in a separate Python process so a crash or a hang there stays there.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.evaluate.metrics import exact_match, normalise_answer

SYNONYMS = {
    "please": "kindly", "help": "assist", "problem": "issue", "issue": "problem", "want": "would like",
    "buy": "purchase", "bought": "purchased", "quickly": "fast", "asap": "as soon as possible", "hello": "hi",
    "hi": "hello", "thanks": "thank you", "received": "got", "broken": "damaged", "damaged": "broken",
    "wrong": "incorrect", "cancel": "call off", "tell": "let me know", "need": "require", "big": "large",
    "small": "little", "begin": "start", "start": "begin", "great": "excellent", "bad": "poor",
    "awful": "terrible", "good": "fine", "love": "adore", "hate": "detest", "movie": "film", "film": "movie",
}
GREETINGS = ("Hi,", "Hello!", "Good morning,", "Hey there,", "Dear team,")
SIGN_OFFS = ("Thanks!", "Thank you.", "Regards.", "Cheers", "Many thanks in advance.")


def _casing(text: str, rng: random.Random) -> str:
    """Flip the case of each sentence's first letter (names and ids mid-sentence are left alone)."""
    return re.sub(r"(^|[.!?]\s+)([A-Za-z])", lambda m: m.group(1) + m.group(2).swapcase(), text)


def _punctuation(text: str, rng: random.Random) -> str:
    stripped = text.rstrip()
    if stripped and stripped[-1] in ".!?":
        return stripped[:-1] + rng.choice(["", "!", "!!", "..."])
    return stripped + rng.choice([".", "!", "?"])


def _whitespace(text: str, rng: random.Random) -> str:
    spaced = re.sub(r" ", lambda m: "  " if rng.random() < 0.3 else " ", text)
    return rng.choice(["", " ", "\n"]) + spaced + rng.choice(["", " ", "\n"])


def _greeting(text: str, rng: random.Random) -> str:
    return f"{rng.choice(GREETINGS)} {text}"


def _sign_off(text: str, rng: random.Random) -> str:
    return f"{text.rstrip()} {rng.choice(SIGN_OFFS)}"


def _synonyms(text: str, rng: random.Random) -> str:
    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = SYNONYMS.get(word.lower())
        if other is None:
            return word
        return other.capitalize() if word[0].isupper() else other

    return re.sub(r"[A-Za-z]+", swap, text)


TRANSFORMS: dict[str, Callable[[str, random.Random], str]] = {
    "casing": _casing, "punctuation": _punctuation, "whitespace": _whitespace, "greeting": _greeting,
    "sign_off": _sign_off, "synonyms": _synonyms,
}


def paraphrase(text: str, rng: random.Random, n_transforms: int = 2) -> tuple[str, list[str]]:
    """`text` through `n_transforms` different transformations picked by `rng`; returns (text, their names).
    A pick that leaves the text unchanged (no synonym in it) is replaced by another."""
    names = list(TRANSFORMS)
    rng.shuffle(names)
    used = []
    for name in names:
        changed = TRANSFORMS[name](text, rng)
        if changed != text:
            text = changed
            used.append(name)
        if len(used) == n_transforms:
            break
    return text, used


def with_last_user(prompt: list[dict], text: str) -> list[dict]:
    last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    return prompt[:last] + [{**prompt[last], "content": text}] + prompt[last + 1:]


def last_user(prompt: list[dict]) -> str:
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def make_paraphrases(prompts: list[list[dict]], n: int, seed: int = 0,
                     given: dict[str, list[str]] | None = None) -> list[list[list[dict]]]:
    """Per prompt, its paraphrased prompts: the user's own (`given`, by original text; none for a prompt it
    does not list) or `n` rule-based ones, deterministic by seed."""
    rng = random.Random(seed)
    result = []
    for prompt in prompts:
        original = last_user(prompt)
        if given is not None:
            texts = given.get(original.strip(), [])
        else:
            texts = [paraphrase(original, rng)[0] for _ in range(n)]
        result.append([with_last_user(prompt, t) for t in texts])
    return result


def load_paraphrases(path: str | Path) -> dict[str, list[str]]:
    """A JSONL file of {"input": original user text, "paraphrases": [text, ...]}."""
    given = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read the paraphrases ({exc.strerror})", path=str(path)) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            original, texts = row["input"], row["paraphrases"]
            assert isinstance(original, str) and isinstance(texts, list) and all(isinstance(t, str) for t in texts)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise UserError('expected {"input": "...", "paraphrases": ["...", ...]}', path=str(path),
                            line=number) from None
        given[original.strip()] = texts
    return given


# ---------------------------------------------------------------------------------------------- style
PYTHON_CHECK = """
import json, runpy, sys
check = runpy.run_path(sys.argv[1]).get("check")
if not callable(check):
    sys.exit(sys.argv[1] + ": defines no check(answer) function")
results = []
for answer in json.load(sys.stdin):
    try:
        results.append(bool(check(answer)))
    except Exception:
        results.append(False)
print(json.dumps(results))
"""


class StyleCheck:
    """A user's style rule over answers: `name`, and `check_all(answers) -> [bool]`."""

    def __init__(self, name: str, check_all: Callable[[list[str]], list[bool]], flag: tuple[str, str]):
        self.name = name
        self.check_all = check_all
        self.flag = flag  # the command-line option that gives this check again


def style_check(regex: str | None = None, schema: str | None = None, python: str | None = None,
                timeout: float = 120.0) -> StyleCheck | None:
    if sum(x is not None for x in (regex, schema, python)) > 1:
        raise UserError("give one of --style-regex, --style-schema, --style-python")
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise UserError(f"--style-regex is not a valid regular expression ({exc})") from None
        return StyleCheck(f"regex {regex}", lambda answers: [pattern.search(a) is not None for a in answers],
                          ("--style-regex", regex))
    if schema is not None:
        from tuneforge.evaluate.prompting import format_checker

        name, valid = format_checker([], json_schema=schema)
        return StyleCheck(name, lambda answers: [valid(a) for a in answers], ("--style-schema", schema))
    if python is not None:
        if not Path(python).is_file():
            raise UserError("file not found", path=python)

        def run_python(answers: list[str]) -> list[bool]:
            try:
                done = subprocess.run([sys.executable, "-c", PYTHON_CHECK, str(python)], input=json.dumps(answers),
                                      capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise UserError(f"the style check took more than {timeout:.0f} s", path=python) from None
            try:
                results = json.loads(done.stdout)
                assert done.returncode == 0 and len(results) == len(answers)
            except (ValueError, AssertionError):
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"the style check failed: {last}", path=python) from None
            return results

        return StyleCheck(f"python {Path(python).name}", run_python, ("--style-python", python))
    return None


# ---------------------------------------------------------------------------------------------- measures
def sample_agreement(samples: list[list[str]]) -> float:
    """Mean over inputs of the share of its samples equal (after strip) to its most common answer."""
    shares = [Counter(normalise_answer(s) for s in group).most_common(1)[0][1] / len(group) for group in samples]
    return sum(shares) / len(shares)


def length_spread(lengths: list[list[int]]) -> float:
    """Mean over inputs of the population standard deviation of its answers' lengths."""
    return sum(statistics.pstdev(group) for group in lengths) / len(lengths)


def _share(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def measure_consistency(model, tokenizer, prompts, references, tools, *, n_samples: int = 5,
                        temperature: float = 0.7, seed: int = 0, paraphrased=None, greedy: list[str] | None = None,
                        checker=None, style: StyleCheck | None = None, max_new_tokens: int = 64,
                        batch_size: int = 16) -> dict:
    """Sampled answers per input, and greedy answers under paraphrase; see the module docstring.

    `paraphrased[i]`: prompt i's paraphrased prompts. `greedy`: the greedy answers to `prompts`, when the
    caller already has them."""
    from tuneforge.generation import generate_chat

    repeated = [p for p in prompts for _ in range(n_samples)]
    repeated_tools = [t for t in tools for _ in range(n_samples)]
    outputs = generate_chat(model, tokenizer, repeated, max_new_tokens=max_new_tokens, temperature=temperature,
                            seed=seed, batch_size=batch_size, tools_list=repeated_tools)
    texts = [o["text"] for o in outputs]
    samples = [texts[i * n_samples:(i + 1) * n_samples] for i in range(len(prompts))]
    lengths = [[o["completion_tokens"] for o in outputs[i * n_samples:(i + 1) * n_samples]] for i in range(len(prompts))]
    result = {
        "n_inputs": len(prompts),
        "n_samples": n_samples,
        "temperature": temperature,
        "sample_agreement": round(sample_agreement(samples), 4),
        "distinct_answers": round(sum(len({normalise_answer(s) for s in g}) for g in samples) / len(samples), 3),
        "sample_exact_match": _share([exact_match(s, r) for g, r in zip(samples, references, strict=True) for s in g]),
        "answer_tokens_mean": round(sum(map(sum, lengths)) / len(texts), 2),
        "answer_tokens_spread": round(length_spread(lengths), 3),
    }
    if checker is not None:
        result["format"] = checker[0]
        result["format_valid_sampled"] = _share([bool(checker[1](t)) for t in texts])
    if style is not None:
        result["style"] = style.name
        result["style_pass_sampled"] = _share(style.check_all(texts))
    if paraphrased:
        flat = [(i, p) for i, group in enumerate(paraphrased) for p in group]
        if flat:
            if greedy is None:
                greedy = [o["text"] for o in generate_chat(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                           batch_size=batch_size, tools_list=tools)]
            answers = [o["text"] for o in generate_chat(
                model, tokenizer, [p for _, p in flat], max_new_tokens=max_new_tokens, batch_size=batch_size,
                tools_list=[tools[i] for i, _ in flat])]
            result["paraphrase"] = {
                "n": len(flat),
                "agreement": _share([exact_match(a, greedy[i]) for (i, _), a in zip(flat, answers, strict=True)]),
                "exact_match": _share([exact_match(a, references[i]) for (i, _), a in zip(flat, answers, strict=True)]),
                "format_valid": _share([bool(checker[1](a)) for a in answers]) if checker else None,
                "style_pass": _share(style.check_all(answers)) if style else None,
                "examples": [{"input": last_user(p), "answer": a, "original_answer": greedy[i]}
                             for (i, p), a in list(zip(flat, answers, strict=True))[:6]],
            }
    result["examples"] = [{"input": last_user(p), "samples": g} for p, g in list(zip(prompts, samples, strict=True))[:5]]
    return result


def consistency_line(consistency: dict) -> str:
    """"consistency: 5 samples at T=0.7 agree 98% (fine-tuned) vs 61% (few-shot); under paraphrase 95% vs 70%"."""
    models = {k: v for k, v in consistency.items() if isinstance(v, dict) and "sample_agreement" in v}
    if not models:
        return ""
    first = next(iter(models.values()))
    head = f"consistency: {first['n_samples']} samples at T={first['temperature']:g} agree " + " vs ".join(
        f"{100 * v['sample_agreement']:.0f}% ({k.replace('_', '-')})" for k, v in models.items())
    if all(v.get("paraphrase") for v in models.values()):
        head += "; answers unchanged under paraphrase " + " vs ".join(
            f"{100 * v['paraphrase']['agreement']:.0f}%" for v in models.values())
    return head


def measure_variants(models: dict, variants: dict, prompts, references, tools, *, n_samples, temperature, paraphrases,
                 paraphrase_file, checker, style, seed, batch_size, max_new_tokens, say) -> dict:
    """`consistency.measure_consistency` for each named (model, tokenizer, shots); the same paraphrases for all."""
    from tuneforge.evaluate.prompting import with_shots
    from tuneforge.evaluate.run import answer_budget

    given = load_paraphrases(paraphrase_file) if paraphrase_file else None
    paraphrased = make_paraphrases(prompts, paraphrases, seed, given) if (paraphrases or given) else None
    budget = answer_budget(models["fine_tuned"][1], references, max_new_tokens)
    result = {"inputs": len(prompts), "paraphrase_source": paraphrase_file or ("rules" if paraphrased else None)}
    for name, (model, tokenizer, shots) in models.items():
        say(f"consistency of {name.replace('_', '-')}: {n_samples} samples at T={temperature:g} on {len(prompts)} "
            "inputs, and under paraphrase")
        shown = [with_shots(p, shots) for p in prompts] if shots else prompts
        shown_paraphrased = [[with_shots(q, shots) for q in group] for group in paraphrased] \
            if (paraphrased and shots) else paraphrased
        greedy = [e["prediction"] for e in variants[name]["examples"][: len(prompts)]]
        result[name] = measure_consistency(
            model, tokenizer, shown, references, tools, n_samples=n_samples, temperature=temperature, seed=seed,
            paraphrased=shown_paraphrased, greedy=greedy, checker=checker, style=style, max_new_tokens=budget,
            batch_size=batch_size)
    return result
