"""The serving engine: per-row adapters equal PEFT, continuous batching equals generating alone, and the
chat API's generation features (penalties, logit_bias, logprobs, seed, n, stop, cancel, constraints)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.tiny_models import build_tiny_model
from tuneforge.generation import generate_chat
from tuneforge.models import load_model
from tuneforge.multi_lora import AdapterRows, install, linear_names, read_lora_adapter
from tuneforge.serving import Constraint, Engine, GenerationRequest, RequestError

# Three adapters that differ in what PEFT's scale depends on: plain alpha/r, rsLoRA's alpha/sqrt(r) on a
# subset of modules, and per-module rank and alpha patterns.
ADAPTER_CONFIGS = {
    "plain": dict(r=4, lora_alpha=8, target_modules="all-linear"),
    "rslora": dict(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True),
    "patterns": dict(r=2, lora_alpha=4, target_modules="all-linear", rank_pattern={"down_proj": 6},
                     alpha_pattern={"o_proj": 12}),
}


def fp32_cpu(model, adapter):
    return load_model(model, adapter, dtype=torch.float32, device="cpu")


def make_lora(base_dir, folder, seed: int, **config):
    """A PEFT adapter with random A and B (B is zero at PEFT's init, which would make every adapter the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(task_type="CAUSAL_LM", **config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def served(request, tmp_path_factory):
    """(base dir, {name: adapter dir}) for a tiny random model of each architecture."""
    root = tmp_path_factory.mktemp(f"serving-{request.param}")
    base = build_tiny_model(request.param, root / "base")
    adapters = {name: make_lora(base, root / name, seed, **config)
                for seed, (name, config) in enumerate(ADAPTER_CONFIGS.items())}
    return str(base), adapters


PROMPTS = [
    [{"role": "user", "content": "what is the answer"}],
    [{"role": "system", "content": "you are helpful"}, {"role": "user", "content": "hello what is a b c"}],
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "please name the category of order 1 2 3"}],
]


def test_mixed_adapter_batch_gives_each_row_its_own_peft_logits(served):
    """One left-padded batch: rows 0-2 with one adapter each, row 3 with none. Each row's logits over its own
    tokens equal PEFT's model for that adapter (unmerged, run alone), to fp32 rounding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.data.tokenize import tokenize_prompt

    base_dir, adapter_dirs = served
    model, tokenizer = fp32_cpu(base_dir, None)
    rows = AdapterRows()
    adapters = []
    for folder in adapter_dirs.values():
        adapter = read_lora_adapter(folder, linear_names(model), "cpu", torch.float32)
        install(model, adapter, rows)
        adapters.append(adapter)
    prompts = [tokenize_prompt(tokenizer, messages) for messages in PROMPTS]
    width = max(map(len, prompts))
    input_ids = torch.full((4, width), tokenizer.pad_token_id)
    mask = torch.zeros((4, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):], mask[row, width - len(prompt):] = torch.tensor(prompt), 1
    rows.assign([*adapters, None])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    for row, folder in enumerate([*adapter_dirs.values(), None]):
        reference = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        if folder is not None:
            reference = PeftModel.from_pretrained(reference, folder)
        with torch.no_grad():
            expected = reference(input_ids=torch.tensor([prompts[row]])).logits[0]
            without = plain(input_ids=torch.tensor([prompts[row]])).logits[0]
        got = logits[row, width - len(prompts[row]):]
        # Relative to the row's logit scale: the concatenated adapters' x @ A_cat^T runs another matmul kernel than
        # PEFT's x @ A^T at small ranks, a few ulps apart (both ~1e-5 from a float64 reference).
        gap = (got - expected).abs().max()
        assert gap <= 1e-5 * expected.abs().max(), (row, gap)
        # The adapter really moves the logits, so the comparison means something.
        assert folder is None or (expected - without).abs().max() > 0.05


class Collector:
    """`emit` for the engine: every message, and each request's final one."""

    def __init__(self):
        self.messages: list[dict] = []

    def __call__(self, message: dict) -> None:
        self.messages.append(message)

    def result(self, request_id: str) -> dict:
        finals = [m for m in self.messages if m["id"] == request_id and ("result" in m or "error" in m)]
        assert len(finals) == 1, finals
        assert "result" in finals[0], finals[0]
        return finals[0]["result"]

    def pieces(self, request_id: str, index: int = 0) -> list[str]:
        return [m["token"] for m in self.messages if m["id"] == request_id and m.get("index") == index and "token" in m]


def request(request_id: str, messages, **fields) -> GenerationRequest:
    return GenerationRequest.from_json({"id": request_id, "messages": messages, **fields})


def alone(base_dir, adapter, messages, **options) -> dict:
    """What the model (an adapter merged into its base) answers to one conversation by itself."""
    model, tokenizer = fp32_cpu(base_dir if adapter is None else None, adapter)
    return generate_chat(model, tokenizer, [messages], **options)[0]


def test_continuous_batching_joins_and_leaves_and_equals_each_model_alone(served):
    """Requests arrive between decode steps, over three adapters and the base, with different lengths (so
    rows leave at different steps); every greedy answer equals generate_chat on that adapter's merged model."""
    base_dir, adapter_dirs = served
    names = [*adapter_dirs, None]
    engine = Engine(load=fp32_cpu, background=False)
    emit = Collector()
    for name in names:  # load the base and every adapter first, so that arrivals meet a running batch
        engine.submit(request(f"warm-{name}", PROMPTS[0], model=base_dir, adapter=adapter_dirs.get(name), max_new_tokens=1), emit)
    engine.run_until_idle()
    plan = []  # (request id, adapter dir, messages, max_new_tokens)
    for number in range(8):
        name = names[number % 4]
        plan.append((f"r{number}", adapter_dirs.get(name), PROMPTS[(number * 3) % 4], 3 + 2 * number))
    for number, (request_id, adapter, messages, max_new) in enumerate(plan):
        engine.submit(request(request_id, messages, model=base_dir, adapter=adapter, max_new_tokens=max_new), emit)
        for _ in range(number % 3):  # 0-2 decode steps before the next arrival
            engine.step()
    engine.run_until_idle()
    assert engine.stats["joined_running"] >= 3 and engine.stats["max_rows"] >= 4, engine.stats
    for request_id, adapter, messages, max_new in plan:
        expected = alone(base_dir, adapter, messages, max_new_tokens=max_new)
        got = emit.result(request_id)
        assert got["choices"][0]["text"] == expected["text"], (request_id, adapter)
        assert got["choices"][0]["finish_reason"] == expected["finish_reason"]
        assert (got["prompt_tokens"], got["completion_tokens"]) == (expected["prompt_tokens"], expected["completion_tokens"])
    assert len(engine._bases) == 1  # one base in memory for all three adapters


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(base dir, one random adapter) of the tiny Llama, for the sampling features."""
    root = tmp_path_factory.mktemp("serving-features")
    base = build_tiny_model("llama", root / "base")
    return str(base), make_lora(base, root / "adapter", 7, **ADAPTER_CONFIGS["plain"])


def run(engine: Engine, *requests: GenerationRequest) -> Collector:
    emit = Collector()
    for item in requests:
        engine.submit(item, emit)
    engine.run_until_idle()
    return emit


def test_penalties_logit_bias_and_logprobs_follow_openai_definitions(llama):
    """Reference, step by step from the model's own full-sequence logits l (no cache):
        l'[t] = l[t] + bias[t] - count[t] * frequency - (count[t] > 0) * presence
    with count over the tokens generated so far; greedy takes argmax l', the reported logprob is
    log_softmax(l')[token] and the top alternatives are the 3 largest of log_softmax(l')."""
    base_dir, _ = llama
    model, tokenizer = fp32_cpu(base_dir, None)
    from tuneforge.data.tokenize import tokenize_prompt

    messages = PROMPTS[1]
    prompt = tokenize_prompt(tokenizer, messages)
    boosted, banned = tokenizer.convert_tokens_to_ids("b"), tokenizer.convert_tokens_to_ids("hello")
    options = dict(max_new_tokens=6, presence_penalty=0.7, frequency_penalty=1.5, logit_bias={str(boosted): 2.0, str(banned): -100},
                   logprobs=True, top_logprobs=3)
    got = run(Engine(load=fp32_cpu, background=False), request("p", messages, model=base_dir, **options)).result("p")
    entries = got["choices"][0]["logprobs"]["content"]
    generated, counts = [], torch.zeros(model.config.vocab_size)
    for entry in entries:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + generated])).logits[0, -1]
        logits[boosted] += 2.0
        logits[banned] -= 100
        logits -= counts * 1.5 + (counts > 0).float() * 0.7
        logprobs = torch.log_softmax(logits, -1)
        token = int(logits.argmax())
        assert entry["token"] == tokenizer.decode([token]) and math.isclose(entry["logprob"], float(logprobs[token]), abs_tol=1e-4)
        top = logprobs.topk(3)
        assert [t["token"] for t in entry["top_logprobs"]] == [tokenizer.decode([i]) for i in top.indices.tolist()]
        assert all(math.isclose(t["logprob"], v, abs_tol=1e-4) for t, v in zip(entry["top_logprobs"], top.values.tolist(), strict=True))
        assert entry["bytes"] == list(entry["token"].encode())
        generated.append(token)
        counts[token] += 1
    assert len(entries) == got["completion_tokens"] == 6
    plain = run(Engine(load=fp32_cpu, background=False), request("q", messages, model=base_dir, max_new_tokens=6)).result("q")
    assert plain["choices"][0]["text"] != got["choices"][0]["text"]  # the penalties changed the answer


def test_seed_reproduces_sampling_whatever_shares_the_batch_and_n_choices_differ(llama):
    base_dir, adapter = llama
    sampled = dict(model=base_dir, adapter=adapter, temperature=1.0, top_p=0.9, seed=123, n=3, max_new_tokens=10)
    alone_texts = [c["text"] for c in run(Engine(load=fp32_cpu, background=False), request("s", PROMPTS[0], **sampled))
                   .result("s")["choices"]]
    crowd = [request(f"other{i}", PROMPTS[i % 4], model=base_dir, adapter=adapter if i % 2 else None, temperature=0.8,
                     max_new_tokens=4 + i) for i in range(4)]
    emit = run(Engine(load=fp32_cpu, background=False), *crowd[:2], request("s", PROMPTS[0], **sampled), *crowd[2:])
    assert [c["text"] for c in emit.result("s")["choices"]] == alone_texts
    assert len(set(alone_texts)) > 1  # each choice draws its own tokens
    reseeded = run(Engine(load=fp32_cpu, background=False), request("s", PROMPTS[0], **{**sampled, "seed": 124}))
    assert [c["text"] for c in reseeded.result("s")["choices"]] != alone_texts


def test_n_greedy_choices_share_one_prefill_and_equal_the_single_answer(llama):
    base_dir, adapter = llama
    engine = Engine(load=fp32_cpu, background=False)
    got = run(engine, request("n", PROMPTS[2], model=base_dir, adapter=adapter, n=3, max_new_tokens=8)).result("n")
    expected = alone(base_dir, adapter, PROMPTS[2], max_new_tokens=8)
    assert [c["index"] for c in got["choices"]] == [0, 1, 2]
    assert all(c["text"] == expected["text"] for c in got["choices"])
    assert got["completion_tokens"] == 3 * expected["completion_tokens"] and engine.stats["prefills"] == 1


def test_stop_string_cuts_the_answer_and_is_never_streamed(llama):
    base_dir, adapter = llama
    full = alone(base_dir, adapter, PROMPTS[0], max_new_tokens=12)["text"]
    words = full.split(" ")
    # A word that first appears mid-answer, with the space before it (so the cut falls between tokens).
    stop = " " + next(w for i, w in enumerate(words) if i >= 2 and w not in words[:i])
    expected = full[: full.index(stop)]
    options = dict(model=base_dir, adapter=adapter, max_new_tokens=12, stop=["zzz-never", stop], stream=True, logprobs=True)
    emit = run(Engine(load=fp32_cpu, background=False), request("t", PROMPTS[0], **options))
    choice = emit.result("t")["choices"][0]
    assert choice["text"] == expected and choice["finish_reason"] == "stop"
    assert "".join(emit.pieces("t")) == expected and all(stop not in piece for piece in emit.pieces("t"))
    streamed = [e for m in emit.messages if "token" in m for e in m["logprobs"]]
    assert streamed == choice["logprobs"]["content"] and len(streamed) == len(expected.split())


def test_cancel_removes_a_request_from_the_running_batch(llama):
    base_dir, adapter = llama
    engine = Engine(load=fp32_cpu, background=False)
    emit = Collector()
    run(engine, request("warm", PROMPTS[0], model=base_dir, adapter=adapter, max_new_tokens=1))
    engine.submit(request("long", PROMPTS[0], model=base_dir, max_new_tokens=200, stream=True), emit)
    engine.submit(request("short", PROMPTS[0], model=base_dir, adapter=adapter, max_new_tokens=9), emit)
    while len(emit.pieces("long")) < 3:
        engine.step()
    engine.cancel("long")
    engine.step()
    streamed = len(emit.pieces("long"))
    assert [c.request.spec.id for c in engine._bases[("model", base_dir, None)].choices] == ["short"]
    engine.run_until_idle()
    assert len(emit.pieces("long")) == streamed and not [m for m in emit.messages if m["id"] == "long" and "token" not in m]
    assert emit.result("short")["choices"][0]["text"] == alone(base_dir, adapter, PROMPTS[0], max_new_tokens=9)["text"]
    assert engine.idle()


class ForcedTokens:
    """A toy constraint: allows exactly one token at each step, then is finished."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.position = tokens, 0

    def fill_allowed(self, mask) -> None:
        mask[self.tokens[self.position]] = True

    def advance(self, token_id: int) -> None:
        assert token_id == self.tokens[self.position]
        self.position += 1

    def is_finished(self) -> bool:
        return self.position == len(self.tokens)


def test_a_constraint_decides_every_token_and_ends_the_answer(llama):
    base_dir, _ = llama
    _, tokenizer = fp32_cpu(base_dir, None)
    forced = tokenizer.convert_tokens_to_ids(["{", '"', "name", '"', ":", "1", "}"])
    assert isinstance(ForcedTokens(forced), Constraint)
    engine = Engine(load=fp32_cpu, background=False, make_constraint=lambda tok, fmt: ForcedTokens(forced))
    got = run(engine, request("c", PROMPTS[0], model=base_dir, temperature=0.7, n=2, max_new_tokens=50,
                              response_format={"type": "json_object"})).result("c")
    for choice in got["choices"]:
        assert choice["text"] == tokenizer.decode(forced) and choice["finish_reason"] == "stop"
    assert got["completion_tokens"] == 2 * len(forced)


def test_bad_requests_are_refused_with_400(llama):
    base_dir, _ = llama
    with pytest.raises(RequestError, match="n must be"):
        GenerationRequest.from_json({"id": "x", "messages": PROMPTS[0], "n": 0})
    with pytest.raises(RequestError, match="logit_bias"):
        GenerationRequest.from_json({"id": "x", "messages": PROMPTS[0], "logit_bias": {"1": 101}})
    engine = Engine(load=fp32_cpu, background=False, make_constraint=None)
    engine._make_constraint = None  # as where tuneforge.constrained is not installed
    emit = Collector()
    engine.submit({"id": "a", "messages": PROMPTS[0], "model": base_dir, "logit_bias": {"999999": 1}}, emit)
    engine.submit({"id": "b", "messages": PROMPTS[0], "model": base_dir, "response_format": {"type": "json_object"}}, emit)
    engine.submit({"id": "c", "messages": PROMPTS[0], "model": base_dir, "adapter": "/no/such/dir"}, emit)
    engine.submit({"id": "d", "messages": []}, emit)
    engine.run_until_idle()
    errors = {m["id"]: m for m in emit.messages if "error" in m}
    assert set(errors) == {"a", "b", "c", "d"} and all(m["status"] == 400 for m in errors.values()), errors
    assert "vocabulary" in errors["a"]["error"] and "tuneforge.constrained" in errors["b"]["error"]
    assert engine.idle()


def test_dora_adapter_and_full_model_are_served_as_models_of_their_own(llama, tmp_path):
    """What needs more than a low-rank term is loaded merged (as load_model does) and still answers."""
    base_dir, _ = llama
    dora = make_lora(base_dir, tmp_path / "dora", 3, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    emit = run(Engine(load=fp32_cpu, background=False),
               request("dora", PROMPTS[0], model=base_dir, adapter=dora, max_new_tokens=8),
               request("full", PROMPTS[0], adapter=base_dir, max_new_tokens=8))
    assert emit.result("dora")["choices"][0]["text"] == alone(base_dir, dora, PROMPTS[0], max_new_tokens=8)["text"]
    assert emit.result("full")["choices"][0]["text"] == alone(base_dir, None, PROMPTS[0], max_new_tokens=8)["text"]


def test_adapter_cache_is_bounded_by_bytes(served):
    base_dir, adapter_dirs = served
    engine = Engine(load=fp32_cpu, background=False, adapter_cache_bytes=1)
    for name, folder in adapter_dirs.items():
        got = run(engine, request(name, PROMPTS[0], model=base_dir, adapter=folder, max_new_tokens=4)).result(name)
        assert got["choices"][0]["text"] == alone(base_dir, folder, PROMPTS[0], max_new_tokens=4)["text"]
        assert len([a for a in engine._adapters.values() if a[0] is not None]) <= 1


def test_the_inference_process_protocol(llama):
    """JSON lines in, interleaved JSON lines out: two streamed requests, a cancel, a bad line, an unknown op."""
    import io

    from tuneforge.service.inference import serve

    base_dir, adapter = llama
    lines = [
        {"id": "1", "op": "generate", "model": base_dir, "adapter": adapter, "messages": PROMPTS[0], "stream": True,
         "max_new_tokens": 5, "n": 2, "temperature": None, "tools": None},
        {"id": "2", "model": base_dir, "messages": PROMPTS[1], "max_new_tokens": 4, "logprobs": True, "top_logprobs": 2},
        {"id": "9", "op": "cancel"},
        {"id": "3", "op": "explode"},
    ]
    stdin = io.StringIO("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    stdout = io.StringIO()
    serve(Engine(load=fp32_cpu), stdin=stdin, stdout=stdout)
    messages = [json.loads(line) for line in stdout.getvalue().splitlines()]
    results = {m["id"]: m["result"] for m in messages if "result" in m}
    errors = {m["id"]: m["status"] for m in messages if "error" in m}
    assert set(results) == {"1", "2"} and errors == {"3": 400, None: 400}
    for index in (0, 1):
        pieces = [m["token"] for m in messages if m["id"] == "1" and m.get("index") == index]
        assert "".join(pieces) == results["1"]["choices"][index]["text"]
    expected = alone(base_dir, adapter, PROMPTS[0], max_new_tokens=5)
    assert results["1"]["choices"][0]["text"] == expected["text"]
    assert len(results["2"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2


@pytest.mark.parametrize("architecture", ["mistral", "gemma3", "phi3"])
def test_sliding_window_and_fused_projection_models_batch_continuously(architecture, tmp_path):
    """Mistral's and Gemma 3's sliding window (16 here, answers run past it) and Phi-3's fused projections:
    rows joining a running batch answer as the model alone."""
    base = str(build_tiny_model(architecture, tmp_path / "base"))
    adapter = make_lora(base, tmp_path / "adapter", 1, **ADAPTER_CONFIGS["plain"])
    engine = Engine(load=fp32_cpu, background=False)
    emit = run(engine, request("warm", PROMPTS[0], model=base, adapter=adapter, max_new_tokens=1))
    plan = [(f"r{i}", [None, adapter][i % 2], PROMPTS[i % 4], 20 + 3 * i) for i in range(5)]
    for request_id, folder, messages, max_new in plan:
        engine.submit(request(request_id, messages, model=base, adapter=folder, max_new_tokens=max_new), emit)
        engine.step()
        engine.step()
    engine.run_until_idle()
    assert engine.stats["joined_running"] >= 3
    for request_id, folder, messages, max_new in plan:
        assert emit.result(request_id)["choices"][0]["text"] == alone(base, folder, messages, max_new_tokens=max_new)["text"]
