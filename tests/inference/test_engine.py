"""KV-cached generation equals recomputing the full forward, for every preset family."""

import pytest
import torch

import mom.convert.gpt2  # noqa: F401 - registers MoM.from_gpt2 (this file may run alone)
from mom.config.model import preset
from mom.errors import MomError
from mom.inference.engine import Engine, SamplingParams
from mom.model.kv_cache import KVCache
from mom.model.model import MoM
from tests.conftest import counting_compile, make_hf_gpt2, sharpen_routers, tiny_config

SMALL = dict(vocab_size=97, n_ctx=64, d_model=32, n_head=4)
FAMILIES = {
    "vanilla": preset("tiny").replace(**SMALL, bottom=3),
    "mom-gru-K2-H6": preset("tiny-mom").replace(**SMALL),
    "mom-mlp-K2": preset("tiny-mom").replace(**SMALL, router="mlp", steps=3),
    "NA!=NF-skip-K3": tiny_config(n_ctx=64, n_attn=4, n_ffn=2, top_k=3, steps=3),
    "skip-K1": tiny_config(n_ctx=64, n_attn=3, n_ffn=2, top_k=1, steps=3),  # whole tokens skip attention
    "layerskip": preset("layerskip").replace(**SMALL),
    "universal": preset("universal").replace(**SMALL),
    "moe": preset("moe").replace(**SMALL),
    "mod-causal-rule": preset("mod").replace(**SMALL),
    "mod-50-causal-rule": preset("mod-50").replace(**SMALL),
    "mod-gru-halves": preset("mod-gru-halves").replace(**SMALL),
    "moe-full-experts": preset("moe-full-experts").replace(**SMALL),
    "qkv-sum-eager": tiny_config(n_ctx=64, n_attn=3, n_ffn=2, top_k=2, steps=3, qkv_combine="sum", attention="eager"),
    "block-token-K2": tiny_config(n_ctx=64, n_attn=3, n_ffn=3, top_k=2, steps=3, route_unit="block"),
    # the router options of issue #18
    "gru-K1-step-both-rmsnorm": tiny_config(n_ctx=64, n_attn=3, n_ffn=2, top_k=1, steps=3, router_step="both",
                                            router_norm="rmsnorm"),
    "mlp-K2-embed-layernorm-probs": preset("tiny-mom").replace(**SMALL, router="mlp", steps=3, router_step="embed",
                                                               router_norm="layernorm", route_weights="probs"),
    "mod-step-bias-layer-map": preset("mod").replace(**SMALL, router_step="bias", router_init="layer_map",
                                                     router_init_bias=1.0),
    "gru-K2-centered": tiny_config(n_ctx=64, n_attn=3, n_ffn=2, top_k=2, steps=3, router_step="both",
                                   router_norm="centered"),
}


def _model(cfg):
    return sharpen_routers(MoM(cfg).eval())


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_logits_and_greedy_tokens_equal_full_forward(name):
    model = _model(FAMILIES[name])
    idx = torch.randint(0, 97, (2, 9))
    engine = Engine(model)
    gens = engine.generate([idx[0].tolist(), idx[1, :5].tolist()], max_new_tokens=12, temperature=0)
    reference = Engine(model, use_cache=False).generate([idx[0].tolist(), idx[1, :5].tolist()],
                                                        max_new_tokens=12, temperature=0)
    assert [g.tokens for g in gens] == [g.tokens for g in reference]
    # Logits at every position: prefill 9, then one token at a time, against one full forward.
    seq = torch.cat([idx[:1], torch.tensor([gens[0].tokens])], dim=1)
    with torch.no_grad():
        full = model(seq, causal_routing=True).logits
        cache = KVCache(model, 1, seq.shape[1])
        parts = [model(seq[:, :9], cache=cache).logits]
        parts += [model(seq[:, t:t + 1], cache=cache).logits for t in range(9, seq.shape[1])]
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4


def test_skip_is_taken_in_the_tested_configs():
    """The equality above is only meaningful if tokens really skip: check they do for a SKIP family."""
    model = _model(FAMILIES["skip-K1"])
    out = model(torch.randint(0, 97, (2, 30)), return_routes=True)
    attn = [r for r in out.routes if r.half == "attn"]
    assert any((r.idx_BTK == r.n_modules).all(-1).any() for r in attn)


def test_batched_prompts_of_different_lengths_match_single_runs():
    model = _model(FAMILIES["mom-gru-K2-H6"])
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [40, 41, 42]]
    batched = Engine(model).generate(prompts, max_new_tokens=6, temperature=0)
    for p, g in zip(prompts, batched):
        assert g.tokens == Engine(model).generate([p], max_new_tokens=6, temperature=0)[0].tokens


def test_vanilla_matches_hf_generate(tmp_path):
    hf = make_hf_gpt2(tmp_path, n_layer=3, n_embd=48, n_head=3, n_positions=64)
    model = MoM.from_gpt2(tmp_path).eval()
    prompt = torch.randint(0, 97, (1, 7))
    ref = hf.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=0)[0, 7:].tolist()
    assert Engine(model).generate([prompt[0].tolist()], max_new_tokens=15, temperature=0)[0].tokens == ref


def test_sampling_is_seeded_and_filters_work():
    model = _model(FAMILIES["mom-mlp-K2"])
    a = Engine(model).generate([[1, 2, 3]], max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.9, seed=7)
    b = Engine(model).generate([[1, 2, 3]], max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.9, seed=7)
    assert a[0].tokens == b[0].tokens
    # top_k=1 is greedy whatever the temperature.
    g = Engine(model).generate([[1, 2, 3]], max_new_tokens=8, temperature=0)
    k1 = Engine(model).generate([[1, 2, 3]], max_new_tokens=8, temperature=2.0, top_k=1, seed=3)
    assert g[0].tokens == k1[0].tokens


def test_streaming_yields_the_same_tokens():
    model = _model(FAMILIES["moe"])
    steps = list(Engine(model).stream([[4, 5, 6]], max_new_tokens=5, temperature=0))
    assert [s[0] for s in steps] == Engine(model).generate([[4, 5, 6]], max_new_tokens=5, temperature=0)[0].tokens


@pytest.mark.parametrize(
    "prompts, params, message",
    [
        ([[]], dict(), "prompt 0 is empty"),
        ([list(range(60))], dict(max_new_tokens=10), "exceed the context length n_ctx=64"),
        ([[1]], dict(temperature=-1), "temperature must be ≥ 0"),
        ([[1]], dict(temperature=float("inf")), "temperature must be ≥ 0 and finite"),
        ([[1]], dict(stop=["\n", ""]), "stop strings must be non-empty"),
        ([[1]], dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
        ([[1]], dict(top_k=0), "top_k must be ≥ 1"),
        ([[1000]], dict(), "token id 1000 outside the vocabulary"),
        ([[1]], dict(seed=2**64), "seed must be between"),  # found by tests/test_fuzz.py (was a torch overflow)
        ([[1]], dict(max_new_tokens=2.5), "max_new_tokens must be an integer, got 2.5"),  # found by a user audit
        ([[1]], dict(top_k="3"), "top_k must be an integer, got '3'"),
        ([[1]], dict(temperature=None), "temperature must be a number, got None"),
    ],
)
def test_bad_generation_input(prompts, params, message):
    model = _model(FAMILIES["vanilla"])
    with pytest.raises(MomError, match=message):
        Engine(model).generate(prompts, SamplingParams(**params))


def test_tiny_temperatures_and_padded_vocabularies():
    # Found by tests/test_fuzz.py. A temperature too small for float32 (logits/τ overflowed to inf, NaN
    # probabilities) samples the greedy token.
    model = _model(FAMILIES["vanilla"])
    greedy = Engine(model).generate([[1, 2, 3]], max_new_tokens=4, temperature=0)[0].tokens
    for tiny in (1e-30, 1e-300, 5e-324):
        assert Engine(model).generate([[1, 2, 3]], max_new_tokens=4, temperature=tiny, seed=0)[0].tokens == greedy
    # A vocabulary padded past GPT-2's (nanoGPT's 50304): ids without a token have no text (was a KeyError).
    torch.manual_seed(0)
    padded = MoM(preset("tiny").replace(vocab_size=50304, n_ctx=16, d_model=16, n_head=2, bottom=1)).eval()
    with torch.no_grad():
        padded.wte.weight[50300].mul_(1000.0)  # the tied head now prefers id 50300 after any prompt
    g = Engine(padded).generate("Hello", max_new_tokens=3, temperature=0, stop=["x"])[0]
    assert g.tokens == [50300] * 3 and g.text == ""


def test_few_token_decode_paths_equal_loop(grouped_path):
    """A few tokens without gradients take the host plan on the CPU (one-by-one) and the gathered-weights path on
    the static paths (CUDA, compile); both must equal the loop reference."""
    cfg = tiny_config(top_k=2, n_attn=3, n_ffn=4)
    fast = _model(cfg)
    ref = MoM(cfg.replace(dispatch="loop")).eval()
    ref.load_state_dict(fast.state_dict())
    idx = torch.randint(0, 97, (1, 3))  # 3 tokens × K=2 = 6 assignments ≤ gather_below
    assert fast.dispatcher.gather_below >= 6
    with torch.no_grad():
        assert (fast(idx).logits - ref(idx).logits).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------- CLI
import subprocess  # noqa: E402
import sys  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    MoM(preset("tiny-mom").replace(d_model=32, n_head=4, n_ctx=64)).save_pretrained(d)
    return d


def _mom(*args):
    return subprocess.run([sys.executable, "-m", "mom.cli", *args], capture_output=True, text=True)


def test_generate_cli(ckpt):
    # --device auto as in every other command (found while fuzzing: it was passed to safetensors as a device name)
    r = _mom("generate", "--ckpt", str(ckpt), "--prompt", "Hello world", "--max-new-tokens", "5", "--temperature", "0",
             "--device", "auto")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello world")
    s = _mom("generate", "--ckpt", str(ckpt), "--prompt", "Hello world", "--max-new-tokens", "5", "--temperature", "0",
             "--stream")
    assert s.returncode == 0 and s.stdout.strip() == r.stdout.strip()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "word " * 70], "exceed the context length n_ctx=64"),
        (["--prompt", "hi", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--prompt", "hi", "--temperature", "-0.5"], "temperature must be ≥ 0"),
        (["--prompt", "hi", "--device", "xyz"], "--device: unknown device 'xyz'"),
        ([], "no prompt"),
    ],
)
def test_generate_cli_bad_input(ckpt, extra, message):
    r = _mom("generate", "--ckpt", str(ckpt), *extra)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_generate_cli_missing_checkpoint(tmp_path):
    r = _mom("generate", "--ckpt", str(tmp_path / "nope"), "--prompt", "hi")
    assert r.returncode == 2 and "checkpoint directory not found" in r.stderr and "Traceback" not in r.stderr


def test_generate_cli_takes_an_unfinished_training_run(ckpt, tmp_path):
    """Like eval, flops and prune: a run directory without a final model.safetensors (interrupted) generates from
    its latest checkpoint (found by a user audit: it said "weights file not found")."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ckpt, run / "checkpoints" / "step-00000002")
    (run / "latest.json").write_text('{"step": 2, "path": "checkpoints/step-00000002"}')
    args = ("--prompt", "Hello", "--max-new-tokens", "4", "--temperature", "0")
    r, ref = _mom("generate", "--ckpt", str(run), *args), _mom("generate", "--ckpt", str(ckpt), *args)
    assert r.returncode == 0 and ref.returncode == 0, r.stderr
    assert r.stdout == ref.stdout


def test_bench_decode_smoke(tmp_path):
    from mom.analysis.bench import bench_decode
    from mom.model.flops import active_layers

    assert active_layers(preset("tiny-mom")) == 14  # 1 bottom + anchor + 6 steps × K=2
    r = bench_decode("tiny-mom", new_tokens=8, prompt_len=4, rounds=1, uncached_tokens=8, profile=str(tmp_path))
    assert r["tokens_per_s"]["mom_cached"] > 0 and r["cached_over_uncached"] > 0 and r["batch"] == 1
    # one operator table per cached contender (the uncached reference is not profiled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mom_cached.txt", "vanilla_equal_active.txt",
                                                          "vanilla_equal_depth.txt"]
    assert "aten::" in (tmp_path / "mom_cached.txt").read_text()


def test_bench_decode_batch_from_the_cli():
    """``mom bench decode --batch 3`` decodes three prompts together; tokens/s counts all of them."""
    import json

    from mom.cli.main import main

    out = subprocess.run([sys.executable, "-m", "mom.cli", "bench", "decode", "--batch", "3", "--new-tokens", "4",
                          "--prompt-len", "4", "--rounds", "1", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["batch"] == 3 and all(v > 0 for v in r["tokens_per_s"].values())
    # One cache slot per attention core: MoM holds what a vanilla model of its depth holds, the deeper one more.
    cache = r["kv_cache_bytes"]
    assert cache["mom_cached"] == cache["vanilla_equal_depth"] < cache["vanilla_equal_active"]
    assert all(r["peak_memory_bytes"][k] > cache[k] for k in cache)  # eager on the CPU: the tensor tracker
    assert main(["bench", "decode", "--batch", "0"]) == 2  # checked like the other sizes
    for cmd in (["bench", "decode"], ["generate", "--ckpt", "no-such-dir", "--prompt", "hi"]):
        assert main(cmd + ["--compile-mode", "reduce-overhead"]) == 2  # a mode without --compile: one error line


@pytest.mark.slow
def test_compiled_decode_equals_eager():
    torch._dynamo.reset()
    model = _model(FAMILIES["NA!=NF-skip-K3"])
    prompts = [[1, 2, 3, 4], [9, 8]]
    eager = Engine(model).generate(prompts, max_new_tokens=10, temperature=0)
    compiled = Engine(model, compile=True).generate(prompts, max_new_tokens=10, temperature=0)
    assert [g.tokens for g in eager] == [g.tokens for g in compiled]


def test_reset_cache_serves_a_new_batch_exactly_like_a_fresh_one():
    """Engine(compile_mode="reduce-overhead") reuses one cache, reset in place: stale keys, values, positions and
    validity from an earlier batch must change nothing (different pads, a SKIP family, so validity matters)."""
    model = _model(FAMILIES["NA!=NF-skip-K3"])
    first, second = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        reused = KVCache(model, 2, 20, pad_lengths=[0, 3])
        model(first, cache=reused)
        model(first[:, :1], cache=reused)
        reused.reset([2, 0])
        logits = {}
        for name, cache in (("reused", reused), ("fresh", KVCache(model, 2, 20, pad_lengths=[2, 0]))):
            parts = [model(second, cache=cache).logits]
            parts += [model(second[:, t:t + 1], cache=cache).logits for t in range(3)]
            logits[name] = torch.cat(parts, 1)
    assert torch.equal(logits["reused"], logits["fresh"])
    with pytest.raises(MomError, match="pad_lengths has 1 entries for a batch of 2"):
        reused.reset([0])


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_decode_traces_once_for_every_length(mode, monkeypatch):
    """One compiled decode step serves every prompt and output length: the cache length is dynamic by default,
    and with CUDA graphs' mode one full-context cache is reused. Counted with dynamo's tracing-only backend (fast);
    tokens must equal eager decoding."""
    counter = counting_compile(monkeypatch)
    model = _model(FAMILIES["NA!=NF-skip-K3"])
    compiled, eager = Engine(model, compile=True, compile_mode=mode), Engine(model)
    caches = []
    for prompt, n in (([1, 2, 3, 4], 6), ([5, 6], 9), (list(range(10, 30)), 4)):
        got = compiled.generate([prompt], max_new_tokens=n, temperature=0)[0].tokens
        assert got == eager.generate([prompt], max_new_tokens=n, temperature=0)[0].tokens
        caches += list(compiled._reused.values())
    assert counter.frame_count == 1
    if mode == "reduce-overhead":
        assert len(caches) == 3 and caches[0] is caches[1] is caches[2]
        assert caches[0].max_len == compiled.cache_length(5) == model.config.n_ctx
    else:
        assert compiled.cache_length(5) == 5
    for prompts in ([[1, 2], [3]], [[4], [5, 6, 7], [8, 9]]):  # new batch sizes: one more trace, then dynamic
        got = [g.tokens for g in compiled.generate(prompts, max_new_tokens=3, temperature=0)]
        assert got == [g.tokens for g in eager.generate(prompts, max_new_tokens=3, temperature=0)]
    assert counter.frame_count == 2


def _graph_mode_engine(model, monkeypatch):
    """An engine in CUDA graphs' mode (cache reuse), traced by dynamo's tracing-only backend (fast)."""
    counting_compile(monkeypatch)
    return Engine(model, compile=True, compile_mode="reduce-overhead")


def test_reused_cache_is_held_by_one_call_at_a_time(monkeypatch):
    """Found by review: two streams of one engine shared the reused cache, and each reset it under the other."""
    model = _model(FAMILIES["NA!=NF-skip-K3"])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # larger weights: tokens depend on every cached key
    graphs, eager = _graph_mode_engine(model, monkeypatch), Engine(model)
    kw = dict(max_new_tokens=8, temperature=1.0, seed=3)
    prompts = ([1, 2, 3, 4, 5], [9, 8, 7])
    want = [eager.generate([q], **kw)[0].tokens for q in prompts]
    graphs.generate([[4, 5]], max_new_tokens=2)  # leaves a free cache for the next call to take
    streams = [graphs.stream([q], **kw) for q in prompts]
    got = [[step[0] for step in steps] for steps in zip(*streams)]
    assert [list(t) for t in zip(*got)] == want
    assert len(graphs._reused) == 1  # both returned their cache; one is kept for the next call


def test_reused_cache_forgets_non_finite_values(monkeypatch):
    """Found by review: masked stale keys have weight 0, but 0 × NaN is NaN, so one call with overflowing weights
    broke every later call of the engine. reset() zeroes the keys and values."""
    model = _model(FAMILIES["vanilla"])
    graphs, eager = _graph_mode_engine(model, monkeypatch), Engine(model)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.bottom[0].attn.c_attn.weight.fill_(float("nan"))
    graphs.generate([list(range(1, 40))], max_new_tokens=6, temperature=0)
    model.load_state_dict(good)
    assert graphs.generate([[1, 2, 3]], max_new_tokens=6, temperature=0)[0].tokens == \
        eager.generate([[1, 2, 3]], max_new_tokens=6, temperature=0)[0].tokens


def test_reused_caches_follow_the_model_dtype(monkeypatch):
    model = _model(FAMILIES["vanilla"])
    graphs = _graph_mode_engine(model, monkeypatch)
    for dtype in (torch.float32, torch.float64, torch.float32):
        model.to(dtype)
        tokens = graphs.generate([[1, 2, 3]], max_new_tokens=4, temperature=0)[0].tokens
        assert tokens == Engine(model).generate([[1, 2, 3]], max_new_tokens=4, temperature=0)[0].tokens
        assert [c.dtype for c in graphs._reused.values()] == [dtype]  # caches of a dtype the model left: dropped


def test_prompts_as_tensors_or_arrays_and_a_single_stop_string():
    # found by a user audit: a tensor prompt raised "Boolean value of Tensor ... is ambiguous", numpy ids were
    # "not iterable", and stop="ab" stopped at any 'a' or 'b'
    import numpy as np

    model = _model(FAMILIES["vanilla"])
    ref = Engine(model).generate([[4, 5, 6]], max_new_tokens=3, temperature=0)[0].tokens
    for prompt in (torch.tensor([4, 5, 6]), torch.tensor([[4, 5, 6]]), np.array([4, 5, 6]), list(np.array([4, 5, 6]))):
        assert Engine(model).generate(prompt, max_new_tokens=3, temperature=0)[0].tokens == ref
    with pytest.raises(MomError, match="prompt 0 must be a string or a sequence of integer token ids"):
        Engine(model).generate([[1.0, 2.0]])
    assert SamplingParams(stop="ON ON").stop == ["ON ON"]


@pytest.mark.parametrize("idx", [torch.tensor([1, 2, 3]), torch.ones(1, 3), torch.zeros(1, 0, dtype=torch.long),
                                 [[1, 2, 3]]])
def test_model_input_must_be_a_2d_integer_tensor(idx):
    with pytest.raises(ValueError, match="idx_BT must be a non-empty \\(batch, time\\) tensor of integer token ids"):
        _model(FAMILIES["vanilla"])(idx)


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_last_token_is_not_fed_back_so_the_whole_context_is_usable(use_cache):
    # found by a user audit: every call ran one forward whose logits nothing read, and a prompt of n_ctx tokens
    # could not get even one new token
    model = _model(FAMILIES["mom-gru-K2-H6"])
    n_ctx = model.config.n_ctx
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    engine = Engine(model, use_cache=use_cache)
    g = engine.generate([list(range(1, n_ctx + 1))], max_new_tokens=1, temperature=0)[0]
    assert len(g.tokens) == 1 and len(calls) == 1  # the prompt's forward only
    calls.clear()
    g = engine.generate([list(range(1, n_ctx - 2))], max_new_tokens=4, temperature=0)[0]
    assert len(g.tokens) == 4 and len(calls) == 4  # prompt, then 3 of the 4 new tokens fed back
    with pytest.raises(MomError, match=f"exceed the context length n_ctx={n_ctx} by 1"):
        engine.generate([list(range(1, n_ctx + 1))], max_new_tokens=2)


@pytest.mark.parametrize("args, kw, message", [
    ((0, 8), {}, "batch_size ≥ 1 and max_len ≥ 1, got 0 and 8"),
    ((1, 0), {}, "batch_size ≥ 1 and max_len ≥ 1, got 1 and 0"),
    ((2, 8), dict(pad_lengths=[0]), "pad_lengths has 1 entries for a batch of 2"),
])
def test_kv_cache_sizes_are_checked(args, kw, message):
    from mom.model.kv_cache import KVCache

    with pytest.raises(MomError, match=message):
        KVCache(_model(FAMILIES["vanilla"]), *args, **kw)
