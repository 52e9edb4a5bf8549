"""Hugging Face export (mom.convert.hf): tiny MoMs of every routing kind, exported and loaded back with
``AutoModelForCausalLM`` / ``AutoTokenizer``, compute mom's logits, decode with their KV cache exactly as mom's engine
does, treat left padding as absent, ship a tokenizer that encodes as mom's, run under lm-eval's ``hf`` backend; the
exporter refuses what it cannot export, by name, and never leaves a partial directory."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mom.config.model import MoMConfig
from mom.data.tokenizer import EOT, tokenizer, tokenizer_files
from mom.errors import CheckpointError, ConfigError, DataError, MomError
from mom.inference.engine import Engine, SamplingParams
from mom.model.model import MoM
from tests.conftest import make_hf_gpt2, tiny_config

transformers = pytest.importorskip("transformers")
from mom.convert.hf import configuration_mom  # noqa: E402  (needs transformers)
from mom.convert.hf.configuration_mom import SUPPORTED_VALUES, MoMHFConfig  # noqa: E402
from mom.convert.hf.export import export_hf  # noqa: E402

PROMPTS = ["The history of", "Hello world, I am a"]
NEW_TOKENS = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Case:
    fields: dict
    # What the (scaled-up) random routers must be seen doing, so that the comparisons exercise it: "all-skip" (some
    # token takes only SKIP at some step, hence is no key there), "mixed" (some token combines two real modules).
    routes: tuple[str, ...] = field(default=())


CASES = {
    "gru-k1-skip": Case(dict(top_k=1), ("all-skip",)),
    "gru-k2-skip-2-chunks": Case(dict(top_k=2, bottom=2, chunks=2, top=1), ("mixed",)),
    "mlp-k2-skip": Case(dict(router="mlp", top_k=2), ("mixed",)),
    "expert-choice": Case(dict(selection="expert", n_attn=2, n_ffn=2, ffn_candidates="diagonal", bottom=0, top=0,
                               anchor=False), ("all-skip", "mixed")),
    "moe-grouped": Case(dict(n_attn=2, n_ffn=4, attn_candidates="diagonal", ffn_candidates="grouped", skip=False,
                             router="mlp", attn_top_k=1, ffn_top_k=2, bottom=0, top=0, anchor=False), ("mixed",)),
    "universal-fixed": Case(dict(n_attn=1, n_ffn=1, router="fixed", skip=False, top_k=1, anchor=False)),
    # Mixture-of-Depths as published: linear router, raw scores, one route per block
    "mod-linear-block": Case(dict(selection="expert", router="linear", route_unit="block", n_attn=2, n_ffn=2,
                                  attn_candidates="diagonal", ffn_candidates="diagonal", bottom=0, top=0,
                                  anchor=False), ("all-skip",)),
    "qkv-sum-block-k2": Case(dict(top_k=2, n_attn=3, n_ffn=3, qkv_combine="sum", route_unit="block"), ("mixed",)),
    # the router options of issue #18 (K = 1 keeping the router probability; step bias and embedding; input norms)
    "gru-k1-step-both-rmsnorm": Case(dict(top_k=1, router_step="both", router_norm="rmsnorm"), ("all-skip",)),
    "mlp-k2-embed-layernorm-probs": Case(dict(router="mlp", top_k=2, router_step="embed", router_norm="layernorm",
                                              route_weights="probs"), ("mixed",)),
    "gru-k2-renorm-layer-map": Case(dict(top_k=2, route_weights="renorm", router_step="bias",
                                         router_init="layer_map", router_init_bias=2.0), ("mixed",)),
    "gru-k2-centered": Case(dict(top_k=2, router_step="both", router_norm="centered"), ("mixed",)),
    "vanilla": Case(dict(chunks=0, bottom=2, top=1)),
}


def tiny_mom(**fields) -> MoM:
    """A tiny MoM with GPT-2's vocabulary (so text can be tokenised) whose random routers decide differently per
    token: router inputs and outputs scaled up, or every token would take the same modules."""
    torch.manual_seed(0)
    model = MoM(tiny_config(vocab_size=50257, **fields)).eval()
    with torch.no_grad():
        for chunk in model.chunks:
            for router in (chunk.router_attn, chunk.router_ffn):
                if router is not None:
                    first = router.gru.weight_ih if hasattr(router, "gru") else getattr(router, "fc", router.out).weight
                    first.mul_(30)
                    router.out.weight.mul_(50)
                    for p in (router.step_bias, router.step_embed):  # zero-initialised: make them count
                        if p is not None:
                            p.normal_(0, 1.0)
                    if router.norm is not None:
                        router.norm.weight.normal_(1.0, 0.5)
                    if router.center_HD is not None:  # running means (router_norm='centered') start at zero
                        router.center_HD.normal_(0, 0.5)
    return model


def load_hf(directory: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True,
                                                                     output_loading_info=True)
    return model.eval(), info


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    case = CASES[request.param]
    model = tiny_mom(**case.fields)
    out = tmp_path_factory.mktemp(request.param) / "hf"
    export_hf(model, out)
    hf, info = load_hf(out)
    return SimpleNamespace(name=request.param, case=case, mom=model, hf=hf, info=info, dir=out,
                           tok=transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True))


def route_kinds(routes) -> set[str]:
    kinds = set()
    for r in routes:
        real_NK = r.idx_BTK.reshape(-1, r.idx_BTK.shape[-1]) < r.n_modules
        if (~real_NK).all(-1).any() and real_NK.any(-1).any():
            kinds.add("all-skip")
        if (real_NK.sum(-1) > 1).any():
            kinds.add("mixed")
    return kinds


def until_eos(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOT) + 1] if EOT in tokens else tokens


def hf_greedy(hf, input_ids, attention_mask) -> list[list[int]]:
    out = hf.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    return [until_eos(row) for row in out[:, input_ids.shape[1]:].tolist()]


# ---------------------------------------------------------------------------------------------- equal to mom
def test_logits_and_loss_equal_mom(exported):
    assert type(exported.hf).__name__ == ("GPT2LMHeadModel" if exported.name == "vanilla" else "MoMForCausalLM")
    assert not any(exported.info.values()), exported.info  # no missing (lm_head is tied), unexpected or mismatched
    assert exported.hf.lm_head.weight.data_ptr() == exported.hf.get_input_embeddings().weight.data_ptr()
    torch.manual_seed(1)
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        ours = exported.mom(idx, causal_routing=True, return_routes=True)
        theirs = exported.hf(idx, labels=idx)
        loss = exported.mom(idx[:, :-1], idx[:, 1:], causal_routing=True).loss
    assert set(exported.case.routes) <= route_kinds(ours.routes)
    torch.testing.assert_close(theirs.logits, ours.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(theirs.loss, loss, rtol=0, atol=1e-4)


def test_cached_greedy_equals_mom_engine(exported):
    engine = Engine(exported.mom)
    for text in PROMPTS:
        enc = exported.tok(text, return_tensors="pt")
        (want,) = engine.generate([enc.input_ids[0].tolist()], SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0))
        assert hf_greedy(exported.hf, enc.input_ids, enc.attention_mask) == [want.tokens]


def test_cached_decoding_equals_full_recompute(exported):
    """A left-padded batch fed through the cache in pieces (a prompt, then one token at a time) gets the logits of
    one full forward at every position: the cache keeps which positions are keys at every attention core."""
    torch.manual_seed(2)
    idx = torch.randint(0, 50257, (2, 12))
    mask = torch.ones_like(idx)
    mask[1, :4] = 0  # row 1: four pads
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        full = exported.hf(idx, attention_mask=mask, position_ids=positions).logits
        out = exported.hf(idx[:, :6], attention_mask=mask[:, :6], position_ids=positions[:, :6], use_cache=True)
        pieces = [out.logits]
        for t in range(6, idx.shape[1]):
            out = exported.hf(idx[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=positions[:, t:t + 1],
                              cache=out.cache, use_cache=True)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1)[mask.bool()], full[mask.bool()], rtol=0, atol=1e-4)


def test_cached_beam_search_equals_recomputing_it(exported):
    """Beam search reorders, repeats and selects cache rows: with the cache it finds what it finds recomputing."""
    tok = exported.tok
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    beams = dict(max_new_tokens=6, num_beams=4, num_return_sequences=2, do_sample=False, output_scores=True,
                 return_dict_in_generate=True)
    cached = exported.hf.generate(**batch, **beams)
    recomputed = exported.hf.generate(**batch, **beams, use_cache=False)
    assert torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(cached.sequences_scores, recomputed.sequences_scores, rtol=0, atol=1e-4)


def test_left_padded_batch_equals_each_prompt_alone(exported):
    tok = exported.tok
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (batch.attention_mask == 0).any()  # the prompts differ in length
    alone = [hf_greedy(exported.hf, **tok(text, return_tensors="pt"))[0] for text in PROMPTS]
    assert hf_greedy(exported.hf, batch.input_ids, batch.attention_mask) == alone
    # and the prompts' own logits, not just the argmax. A MoM counts positions from each row's first real token by
    # itself; HF's GPT-2 forward counts from the first column unless given position ids (its generate gives them).
    positions = {}
    if exported.name == "vanilla":
        positions["position_ids"] = (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        padded = exported.hf(**batch, **positions).logits
        for b, text in enumerate(PROMPTS):
            n = len(tok(text).input_ids)
            single = exported.hf(**tok(text, return_tensors="pt")).logits[0]
            torch.testing.assert_close(padded[b, -n:], single, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------- tokenizers
def test_tokenizer_round_trips_like_moms(tmp_path, monkeypatch):
    export_hf(tiny_mom(top_k=1), tmp_path / "hf")
    # Without trust_remote_code transformers asks whether to run the config's custom code (AutoTokenizer reads
    # config.json); answered "no", it still loads the tokenizer.
    monkeypatch.setattr("builtins.input", lambda prompt="": "n")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ("The history of", "  Ünïcödé 日本語, it's 3.14\n\tdone"):
        ids = tok(text).input_ids
        assert ids and ids == tokenizer().encode_ordinary(text)
        assert tok.decode(ids) == text
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == EOT
    assert tok.model_max_length == 32
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["bos_token_id"] == gen["pad_token_id"] == EOT


def test_corpus_tokenizer_is_exported_with_its_model(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = ["The history of the world is long.", "Hello world, I am a tiny corpus."] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    MoM(tiny_config(vocab_size=bpe.get_vocab_size())).save_pretrained(model_dir)
    bpe.save(str(model_dir / "tokenizer.json"))  # as `mom prepare --tokenizer bpe:N` leaves it beside the model
    export_hf(model_dir, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("The history of").input_ids == bpe.encode("The history of").ids != []
    eos = bpe.token_to_id("<|endoftext|>")
    assert tok.eos_token_id == eos == transformers.GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id
    # the same tokenizer given explicitly, also with a vanilla model; the GPT-2 BPE does not fit such a vocabulary
    export_hf(MoM.from_pretrained(model_dir), tmp_path / "explicit", tokenizer_files=model_dir / "tokenizer.json")
    assert (tmp_path / "explicit" / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    export_hf(MoM(tiny_config(vocab_size=bpe.get_vocab_size(), chunks=0)), tmp_path / "gpt2-layout",
              tokenizer_files=model_dir)
    assert json.loads((tmp_path / "gpt2-layout" / "config.json").read_text())["eos_token_id"] == eos
    # nothing names the tokenizer of a model given as an object, and the GPT-2 BPE does not fit: no tokenizer files
    export_hf(MoM.from_pretrained(model_dir), tmp_path / "gpt2")
    assert not (tmp_path / "gpt2" / "tokenizer.json").exists()
    assert "tokenizer: none (no known tokenizer fits this vocabulary)" in (tmp_path / "gpt2" / "README.md").read_text()
    # a tokenizer that is given must fit
    big = tmp_path / "big.json"
    files = tokenizer_files()
    Tokenizer(models.BPE.from_file(str(files["encoder.json"]), str(files["vocab.bpe"]))).save(str(big))
    with pytest.raises(DataError, match=f"more than the model's vocabulary of {bpe.get_vocab_size()}"):
        export_hf(MoM.from_pretrained(model_dir), tmp_path / "big", tokenizer_files=big)
    assert not (tmp_path / "big").exists()


# ---------------------------------------------------------------------------------------------- refusals
def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def no_leftovers(parent: Path, *expected: str) -> bool:
    return sorted(p.name for p in parent.iterdir()) == sorted(expected)


def test_centered_running_means_move_in_training_as_moms_do(tmp_path):
    """``router_norm='centered'`` with a non-default ``router_center_momentum``: one training forward moves the HF
    model's running means exactly as mom's (so a fine-tune through transformers keeps centring alike)."""
    model = tiny_mom(top_k=2, router_step="both", router_norm="centered", router_center_momentum=0.5)
    export_hf(model, tmp_path / "hf")
    hf, _ = load_hf(tmp_path / "hf")
    idx = torch.randint(0, 50257, (2, 12))
    before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("center_HD")}
    model.train(), hf.train()
    model(idx), hf(input_ids=idx)
    mom_means = {n: b for n, b in model.named_buffers() if n.endswith("center_HD")}
    hf_means = sorted((n, b) for n, b in hf.named_buffers() if n.endswith("center_HD"))
    assert len(hf_means) == len(mom_means) > 0
    for (n, b), (_, h) in zip(sorted(mom_means.items()), hf_means):
        assert not torch.equal(b, before[n])  # they moved
        torch.testing.assert_close(h, b, rtol=1e-5, atol=1e-6)


def test_export_refuses_what_is_not_a_mom_model(tmp_path):
    (tmp_path / "empty").mkdir()
    make_hf_gpt2(tmp_path / "gpt2")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError) as e:
        export_hf(tmp_path / "empty", tmp_path / "out")
    assert "not a mom model directory" in one_line_error(e)
    with pytest.raises(MomError) as e:
        export_hf(tmp_path / "gpt2", tmp_path / "out")
    one_line_error(e)
    with pytest.raises(CheckpointError, match="model directory not found"):
        export_hf(tmp_path / "file", tmp_path / "out")
    assert no_leftovers(tmp_path, "empty", "gpt2", "file")


def test_export_refuses_busy_out_dirs_and_replaces_only_when_forced(tmp_path):
    model_dir = tmp_path / "model"
    tiny_mom(top_k=1).save_pretrained(model_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MomError) as e:
        export_hf(model_dir, out)
    assert "is not empty; pass force=True" in one_line_error(e)
    assert no_leftovers(out, "keep.txt")
    with pytest.raises(MomError, match="would replace the model it is made from"):
        export_hf(model_dir, model_dir, force=True)
    with pytest.raises(MomError, match="would replace the model it is made from"):
        export_hf(model_dir, tmp_path, force=True)
    assert export_hf(model_dir, out, force=True) == out
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert no_leftovers(tmp_path, "model", "out")


def test_config_values_the_modeling_file_lacks_are_refused_by_name(tmp_path, monkeypatch):
    fields = tiny_config().to_dict()
    with pytest.raises(ValueError, match="'router_bias' is unknown"):
        MoMHFConfig.from_mom({**fields, "router_bias": "per_step"})
    with pytest.raises(ValueError, match="router='lstm' is not implemented"):
        MoMHFConfig.from_mom({**fields, "router": "lstm"})
    # an export of a value the table does not allow fails by name and leaves nothing behind
    monkeypatch.setitem(SUPPORTED_VALUES, "selection", ("token",))
    with pytest.raises(ConfigError) as e:
        export_hf(tiny_mom(selection="expert"), tmp_path / "out")
    assert "selection='expert' is not implemented" in one_line_error(e)
    assert no_leftovers(tmp_path)
    monkeypatch.undo()
    # so does loading an export whose config was edited to one
    export_hf(tiny_mom(top_k=1), tmp_path / "out")
    path = tmp_path / "out" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "attn_candidates": "random"}))
    with pytest.raises(ValueError, match="attn_candidates='random' is not implemented"):
        load_hf(tmp_path / "out")


def test_every_momconfig_field_is_listed_and_round_trips():
    assert set(SUPPORTED_VALUES) == {f.name for f in dataclasses.fields(MoMConfig)}
    cfg = tiny_config(selection="expert", temperature=0.3, top_k=2, ffn_top_k=1, capacity=0.25, key_mask="pack")
    assert MoMConfig.from_dict(MoMHFConfig.from_mom(cfg.to_dict()).mom_fields()) == cfg


@pytest.mark.parametrize("fields", [dict(router_step="both", router_init="layer_map", router_init_bias=3.0),
                                    dict(router="mlp", router_step="bias", router_init="layer_map", steps=4, n_attn=2,
                                         skip=False, attn_top_k=2, ffn_top_k=1, router_norm="rmsnorm")])
def test_a_fresh_hf_model_initialises_its_routers_as_mom_does(fields):
    """``router_init`` is an initialisation: a Hugging Face model built from the config (not loaded) starts its step
    biases on the layer map's choices and its step embeddings and norms as mom does."""
    from mom.convert.hf.modeling_mom import MoMForCausalLM

    cfg = tiny_config(**fields)
    torch.manual_seed(0)
    hf = MoMForCausalLM(MoMHFConfig.from_mom(cfg.to_dict()))
    ours = dict(MoM(cfg).named_parameters())
    checked = 0
    for name, p in hf.named_parameters():
        if ".router_" in name and name.rsplit(".", 1)[-1] in ("step_bias", "step_embed") or ".norm." in name:
            torch.testing.assert_close(p, ours[name], msg=name)
            checked += 1
    assert checked >= 2 * (1 + ("both" == cfg.router_step) + (cfg.router_norm != "none"))


def test_remote_code_imports_only_torch_transformers_and_the_standard_library():
    for name in ("configuration_mom.py", "modeling_mom.py"):
        tree = ast.parse(Path(configuration_mom.__file__).with_name(name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= {"torch", "transformers"} | set(sys.stdlib_module_names), (name, roots)


# ---------------------------------------------------------------------------------------------- lm-eval
_LM_EVAL_ROWS = [
    {"q": "What colour is the sky on a clear day?", "choices": ["blue", "green", "red"], "answer": 0, "target": "blue"},
    {"q": "How many legs does a cat have?", "choices": ["two", "four", "six"], "answer": 1, "target": "four"},
    {"q": "Which animal barks?", "choices": ["cat", "fish", "dog"], "answer": 2, "target": "dog"},
]
_LM_EVAL_TASKS = {
    "mom_hf_mc": 'output_type: multiple_choice\ndoc_to_text: "Question: {{q}}\\nAnswer:"\n'
                 'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n',
    "mom_hf_gen": 'output_type: generate_until\ndoc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_target: "{{target}}"\n'
                  'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
                  'metric_list:\n  - metric: exact_match\n',
}
# Run in a fresh interpreter: the offline switches are read when huggingface_hub and datasets are imported, and any
# attempt to open a connection fails the run.
_LM_EVAL_SCRIPT = """
import json, socket, sys

def no_network(*args, **kwargs):
    raise OSError("the test tried to reach the network")

socket.socket.connect = no_network
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

model_dir, tasks_dir = sys.argv[1:]
results = simple_evaluate(model="hf", model_args={"pretrained": model_dir, "trust_remote_code": True},
                          tasks=["mom_hf_mc", "mom_hf_gen"], limit=5, batch_size=2, device="cpu",
                          task_manager=TaskManager(include_path=tasks_dir, include_defaults=False),
                          bootstrap_iters=0, log_samples=False)
print("RESULTS " + json.dumps(results["results"], default=float))
"""


def test_lm_eval_hf_backend_scores_a_local_task(tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate", reason="lm-eval's hf backend needs accelerate (pip install 'lm-eval[hf]')")
    export_hf(tiny_mom(top_k=1, n_ctx=64), tmp_path / "hf")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _LM_EVAL_ROWS))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for name, body in _LM_EVAL_TASKS.items():
        (tasks_dir / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                                f"    test: {data}\ntest_split: test\n{body}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _LM_EVAL_SCRIPT, str(tmp_path / "hf"), str(tasks_dir)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    assert results["mom_hf_mc"]["sample_len"] == 3 and 0 <= results["mom_hf_mc"]["acc,none"] <= 1
    assert results["mom_hf_gen"]["sample_len"] == 3 and 0 <= results["mom_hf_gen"]["exact_match,none"] <= 1
