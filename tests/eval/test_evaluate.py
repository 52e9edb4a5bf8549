"""Evaluation: metrics against hand-computed values, sliding-window perplexity against brute force, the pooled
classification head, beam search (beam 1 == greedy, exhaustive optimum), and tiny end-to-end fine-tunes through
the ``mom eval`` CLI with its one-line errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mom.cli.eval
from mom.cli.main import main
from mom.config.model import preset
from mom.data.tasks import GLUE_TASKS, Example
from mom.errors import MomError
from mom.eval.finetune import forward_at
from mom.eval.glue import SequenceClassifier, encode_examples
from mom.eval.lm_eval import _check_limit, lm_eval_adapter
from mom.eval.metrics import accuracy, f1_binary, glue_metrics, matthews, mean_std, pearson, rouge, spearman
from mom.eval.perplexity import perplexity, sliding_windows
from mom.eval.xsum import summary_example
from mom.inference.beam import beam_search, greedy
from mom.inference.engine import Engine, SamplingParams
from mom.model.model import MoM
from mom.runs import load_model
from tests.conftest import cli_error, tiny_config

GLUE = Path(__file__).parents[1] / "fixtures" / "glue"
XSUM = Path(__file__).parents[1] / "fixtures" / "xsum"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny MoM (GRU router, top-2, H=6, anchor) with the real GPT-2 vocabulary, so text can be tokenised."""
    torch.manual_seed(0)
    cfg = preset("tiny-mom").replace(d_model=32, n_head=4, n_ctx=64, router_hidden=16)
    d = tmp_path_factory.mktemp("ckpt")
    MoM(cfg).save_pretrained(d)
    return d


# ---------------------------------------------------------------------------------------------- metrics
def test_classification_metrics_by_hand():
    pred, gold = [1, 1, 0, 1, 0], [1, 0, 0, 1, 1]
    # TP = 2 (0, 3), FP = 1 (1), FN = 1 (4), TN = 1 (2)
    assert accuracy(pred, gold) == pytest.approx(3 / 5)
    assert f1_binary(pred, gold) == pytest.approx(2 / 3)  # P = R = 2/3
    assert matthews(pred, gold) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert matthews([1, 1, 1], [1, 0, 1]) == 0.0  # constant prediction
    assert f1_binary([0, 0], [1, 0]) == 0.0


def test_correlations_by_hand():
    # x = 1,2,3; y = 1,2,4: cov = 3, var_x = 2, var_y = 42/9 → r = 3 / sqrt(2 · 42/9) = 9 / sqrt(84)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    # ranks 1,2,3,4 vs 1,3,2,4: Σd² = 2 → ρ = 1 - 6·2 / (4·15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([2, 2, 2], [1, 2, 3]) == 0.0  # undefined → 0, not NaN


def test_glue_metric_sets_and_score():
    mrpc = glue_metrics(GLUE_TASKS["mrpc"], {"dev": [1, 1, 0, 1, 0]}, {"dev": [1, 0, 0, 1, 1]})
    assert mrpc == pytest.approx({"f1": 2 / 3, "accuracy": 3 / 5, "score": (2 / 3 + 3 / 5) / 2})
    mnli = glue_metrics(GLUE_TASKS["mnli"], {"dev_matched": [0, 1], "dev_mismatched": [2, 2, 2]},
                           {"dev_matched": [0, 2], "dev_mismatched": [2, 2, 1]})
    assert mnli == pytest.approx({"accuracy_m": 0.5, "accuracy_mm": 2 / 3, "score": (0.5 + 2 / 3) / 2})
    assert set(glue_metrics(GLUE_TASKS["cola"], {"dev": [1, 0]}, {"dev": [1, 0]})) == {"mcc", "score"}
    stsb = glue_metrics(GLUE_TASKS["stsb"], {"dev": [1.0, 2.0, 3.0]}, {"dev": [1.0, 2.0, 4.0]})
    assert stsb["pearson"] == pytest.approx(9 / math.sqrt(84)) and stsb["spearman"] == pytest.approx(1.0)


def test_rouge_by_hand():
    r = rouge(["the cat on the mat"], ["the cat sat on the mat"])
    # unigrams: 5 of 5 predicted match, 5 of 6 reference → F = 10/11; LCS = 5 words, same F
    assert r["rouge1"] == pytest.approx(10 / 11) and r["rougeL"] == pytest.approx(10 / 11)
    # bigrams: the cat, on the, the mat match: P = 3/4, R = 3/5 → F = 2/3
    assert r["rouge2"] == pytest.approx(2 / 3)
    # sentence order swapped: LCS over the whole text is 3 of 6 words; per sentence (Lsum) everything matches
    s = rouge(["The dog ran. The cat sat."], ["The cat sat. The dog ran."])
    assert s["rougeL"] == pytest.approx(0.5) and s["rougeLsum"] == pytest.approx(1.0)
    # stemming: "running" and "runs" both stem to "run"
    assert rouge(["dogs running"], ["dog runs"])["rouge1"] == pytest.approx(1.0)
    assert rouge(["a", ""], ["a", "b"])["rouge1"] == pytest.approx(0.5)  # an empty summary scores 0


def test_mean_std():
    mean, std = mean_std([{"a": 1.0}, {"a": 2.0}, {"a": 4.0}])
    assert mean["a"] == pytest.approx(7 / 3) and std["a"] == pytest.approx(math.sqrt(((4 / 3) ** 2 + (1 / 3) ** 2 + (5 / 3) ** 2) / 2))
    assert mean_std([{"a": 1.0}])[1] is None


# ---------------------------------------------------------------------------------------------- perplexity
def test_sliding_windows_by_hand():
    # N = 10, n_ctx = 4, stride 2: each token after the first is scored once, by the first window holding it
    assert sliding_windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert sliding_windows(3, 4, 2) == [(0, 3, 1)]
    # the largest stride, n_ctx - 1: windows share one token, the first of each is scored by the one before
    assert sliding_windows(9, 4, 3) == [(0, 4, 1), (3, 7, 4), (6, 9, 7)]
    with pytest.raises(MomError, match="stride must be in"):
        sliding_windows(9, 4, 4)  # a window's first token would have no context


def _brute_force_nll(model, toks, n_ctx, stride):
    """Σ -log p(token i | its window's left context), each context run through the model on its own."""
    total = 0.0
    for i in range(1, len(toks)):
        begin = max(0, math.ceil((i - n_ctx + 1) / stride)) * stride  # first window [b, b + n_ctx) holding i
        with torch.no_grad():
            logits = model(torch.tensor([toks[begin:i]]), causal_routing=True).logits[0, -1]
        total -= torch.log_softmax(logits.double(), -1)[toks[i]].item()
    return total / (len(toks) - 1)


@pytest.mark.parametrize("selection", ["token", "expert"])
def test_perplexity_equals_brute_force(selection):
    cfg = tiny_config(n_ctx=16, selection=selection, **({"capacity": 0.5} if selection == "expert" else {}))
    model = MoM(cfg).eval()
    toks = torch.randint(0, cfg.vocab_size, (45,)).tolist()
    res = perplexity(model, toks, stride=6, batch_size=3)
    assert res.scored == 44 and res.windows == len(sliding_windows(45, 16, 6))
    assert res.nll == pytest.approx(_brute_force_nll(model, toks, 16, 6), abs=1e-5)
    assert res.ppl == pytest.approx(math.exp(res.nll))
    # text that fits the context: the plain full-sequence loss
    short = toks[:16]
    with torch.no_grad():
        full = model(torch.tensor([short[:-1]]), torch.tensor([short[1:]]), causal_routing=True).loss.item()
    assert perplexity(model, short).nll == pytest.approx(full, abs=1e-5)


def test_perplexity_cli_on_text_and_token_files(ckpt, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12, encoding="utf-8")
    assert main(["eval", "ppl", "--ckpt", str(ckpt), "--data", str(text), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    from mom.data.tokenizer import tokenizer

    ids = tokenizer().encode_ordinary(text.read_text())
    assert report["tokens"] == len(ids) and report["stride"] == 32 and report["ppl"] == pytest.approx(math.exp(report["nll"]))
    data = tmp_path / "prepared"
    data.mkdir()
    np.asarray(ids, dtype=np.uint16).tofile(data / "val.bin")  # nanoGPT layout, no meta.json
    assert main(["eval", "ppl", "--ckpt", str(ckpt), "--data", str(data), "--json", "--stride", "16"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["tokens"] == len(ids) and again["windows"] > report["windows"]
    assert main(["eval", "ppl", "--ckpt", str(ckpt), "--data", str(data), "--max-tokens", "40"]) == 0
    assert "over 39 tokens" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- heads
def test_forward_at_reads_the_selected_rows():
    model = MoM(tiny_config()).eval()
    idx = torch.randint(0, 97, (3, 12))
    b, t = torch.tensor([0, 2, 2, 1]), torch.tensor([5, 0, 11, 7])
    with torch.no_grad():
        full = model(idx).logits
        hidden, logits, aux = forward_at(model, idx, b, t)
    assert hidden.shape == (4, 32) and torch.allclose(logits, full[b, t], atol=1e-5)
    with torch.no_grad():
        every = model(idx, return_hidden=True)
    assert torch.allclose(hidden, every.hidden[b, t], atol=1e-6)  # the same ln_f states as the full forward
    with pytest.raises(ValueError, match="rows and targets"):
        model(idx, idx, rows=(b, t))


def test_classifier_pools_the_last_real_token_and_ignores_right_padding():
    clf = SequenceClassifier(MoM(tiny_config()), 3).eval()
    row = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        alone, _ = clf(row, torch.tensor([7]))
        padded, _ = clf(torch.cat([row, torch.zeros(1, 5, dtype=torch.long)], 1), torch.tensor([7]))
    assert torch.allclose(alone, padded, atol=1e-5)


def test_pair_encoding_trims_the_longer_side_first():
    from mom.data.tokenizer import EOT, tokenizer

    enc = tokenizer()
    ex = Example("one two three four five six seven eight", "nine ten", 0)
    ids = encode_examples([ex], enc, max_len=7)[0]
    assert len(ids) == 7 and ids.count(EOT) == 1
    a, b = ids[:ids.index(EOT)], ids[ids.index(EOT) + 1:]
    assert enc.decode(b) == " nine ten" or enc.decode(b) == "nine ten"
    assert enc.decode(a) == "one two three four"


# ---------------------------------------------------------------------------------------------- decoding
def _greedy_reference(model, prompt, n, eot):
    seq = list(prompt)
    out = []
    for _ in range(n):
        with torch.no_grad():
            tok = int(model(torch.tensor([seq]), causal_routing=True).logits[0, -1].argmax())
        if tok == eot:
            break
        out.append(tok)
        seq.append(tok)
    return out


def test_beam_one_is_greedy():
    model = MoM(tiny_config(n_ctx=32)).eval()
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (5, 9, 3)]
    engine_out = [g.tokens for g in Engine(model).generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))]
    for prompt, eng in zip(prompts, engine_out):
        assert beam_search(model, prompt, 1, 10) == eng  # no EOT in a 97-token vocabulary: full length
        assert greedy(model, [prompt], 10) == [eng]
        stop = eng[3]  # make the 4th greedy token the end token: both must stop there
        assert beam_search(model, prompt, 1, 10, eot=stop) == _greedy_reference(model, prompt, 10, stop)


def test_beam_search_with_every_first_token_finds_the_exhaustive_optimum():
    torch.manual_seed(3)
    model = MoM(tiny_config(vocab_size=11, n_ctx=16, temperature=0.5)).eval()
    prompt = [1, 4, 2]
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].double(), -1)
        best, arg = -math.inf, None
        for a in range(11):
            second = torch.log_softmax(model(torch.tensor([prompt + [a]])).logits[0, -1].double(), -1)
            b = int(second.argmax())
            if first[a] + second[b] > best:
                best, arg = first[a] + second[b], [a, b]
    # 11 beams keep every first token alive; with no end token all hypotheses have length 2
    assert beam_search(model, prompt, 11, 2, eot=-1) == arg


# ---------------------------------------------------------------------------------------------- CLI end to end
def _run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_glue_fine_tune_end_to_end(ckpt, capsys):
    report = _run_json(capsys, ["eval", "glue", "--ckpt", str(ckpt), "--task", "sst2", "--data", str(GLUE / "SST-2"),
                                "--epochs", "12", "--lr", "3e-3", "--batch-size", "8", "--seeds", "0,1", "--json"])
    assert report["task"] == "sst2" and report["sizes"] == {"train": 8, "dev": 4}
    assert set(report["mean"]) == {"accuracy", "score"} and set(report["std"]) == {"accuracy", "score"}
    assert [r["seed"] for r in report["runs"]] == [0, 1]
    for run in report["runs"]:
        # full-batch updates on the 8 training sentences: the loss must fall well below log 2
        assert run["updates"] == 12 and run["train_loss_last"] < run["train_loss_first"] - 0.1
        assert 0 <= run["metrics"]["accuracy"] <= 1


def test_glue_regression_and_pairs_end_to_end(ckpt, capsys):
    report = _run_json(capsys, ["eval", "glue", "--ckpt", str(ckpt), "--task", "sts-b", "--data", str(GLUE),
                                "--epochs", "2", "--lr", "1e-3", "--batch-size", "2", "--json"])
    assert set(report["mean"]) == {"pearson", "spearman", "score"} and report["std"] is None
    report = _run_json(capsys, ["eval", "glue", "--ckpt", str(ckpt), "--task", "mnli", "--data", str(GLUE / "MNLI"),
                                "--epochs", "1", "--json"])
    assert set(report["mean"]) == {"accuracy_m", "accuracy_mm", "score"}
    assert report["sizes"] == {"train": 4, "dev_matched": 2, "dev_mismatched": 3}


def test_xsum_fine_tune_end_to_end(ckpt, tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    report = _run_json(capsys, ["eval", "xsum", "--ckpt", str(ckpt), "--data", str(XSUM), "--epochs", "8",
                                "--lr", "3e-3", "--batch-size", "4", "--max-new-tokens", "12", "--json",
                                "--predictions", str(preds)])
    assert set(report["mean"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    run = report["runs"][0]
    # full-batch updates on the 4 training pairs: the summary-token loss must fall
    assert run["updates"] == 8 and run["train_loss_last"] < run["train_loss_first"] - 0.3
    assert report["sizes"] == {"train": 4, "test": 2} and report["separator"] == "\nTL;DR:"
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["20001", "20002"] and "seed0" in rows[0]
    beam = _run_json(capsys, ["eval", "xsum", "--ckpt", str(ckpt), "--data", str(XSUM), "--epochs", "1",
                              "--beams", "3", "--max-new-tokens", "6", "--max-doc-tokens", "20", "--json"])
    assert beam["params"]["beams"] == 3 and set(beam["mean"]) == set(report["mean"])


def test_summary_example_truncation():
    prompt, target = summary_example(list(range(100)), [7, 8, 9, 10], [5, 6], n_ctx=20, max_new_tokens=4)
    assert prompt == list(range(14)) + [5, 6] and target == [7, 8, 9, 50256]
    assert len(prompt) + len(target) <= 20
    with pytest.raises(MomError, match="no room for the document"):
        summary_example([1], None, [5, 6], n_ctx=8, max_new_tokens=6)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_exit_2(ckpt, tmp_path, capsys):
    glue = ["eval", "glue", "--ckpt", str(ckpt), "--epochs", "1"]
    assert "checkpoint directory not found" in cli_error(capsys, ["eval", "glue", "--ckpt", str(tmp_path / "none"),
                                                               "--task", "sst2", "--data", str(GLUE)])
    assert "unknown task 'sst5'" in cli_error(capsys, [*glue, "--task", "sst5", "--data", str(GLUE)])
    sst = tmp_path / "SST-2"
    sst.mkdir()
    (sst / "train.tsv").write_text((GLUE / "SST-2" / "train.tsv").read_text())
    assert "missing dev.tsv" in cli_error(capsys, [*glue, "--task", "sst2", "--data", str(sst)])
    (sst / "dev.tsv").write_text("sentence\tlabel\ngood film \t1\nbad film \tpositive\n")
    err = cli_error(capsys, [*glue, "--task", "sst2", "--data", str(sst)])
    assert f"{sst / 'dev.tsv'}: line 3: label 'positive' is not one of 0, 1" in err
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"document": "a", "summary": "b"}\n{"document": "c", "headline": "d"}\n')
    err = cli_error(capsys, ["eval", "xsum", "--ckpt", str(ckpt), "--data", str(bad)])
    assert 'line 2 has no "summary" field' in err
    assert "unknown summarisation task" in cli_error(capsys, ["eval", "xsum", "--ckpt", str(ckpt), "--task", "cnn-dm"])
    assert "--seeds" in cli_error(capsys, [*glue, "--task", "rt-polarity", "--seeds", "a,b"])
    text = tmp_path / "t.txt"
    text.write_text("Some text to score, long enough for a few windows of the tiny model.")
    assert "--stride must be in" in cli_error(capsys, ["eval", "ppl", "--ckpt", str(ckpt), "--data", str(text),
                                                     "--stride", "999"])


def test_cli_error_in_a_fresh_process(tmp_path):
    """The installed entry point: one line on stderr, exit code 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "mom.cli", "eval", "glue", "--ckpt", str(tmp_path / "missing"),
                           "--task", "cola", "--data", str(GLUE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("mom: error: ") and proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------- lm-eval-harness
_LM_EVAL_ROWS = [
    {"q": "What colour is the sky on a clear day?", "choices": ["blue", "green", "red"], "answer": 0,
     "text": "The sky is blue on a clear day, and the grass is green.", "target": "blue"},
    {"q": "How many legs does a cat have?", "choices": ["two", "four", "six"], "answer": 1,
     "text": "A cat has four legs and a long tail. " * 12, "target": "four"},  # longer than n_ctx: rolling windows
    {"q": "Which animal barks?", "choices": ["cat", "fish", "dog"], "answer": 2,
     "text": "Dogs bark at night when strangers pass.", "target": "dog"},
]
_LM_EVAL_TASKS = {
    "mom_mc": 'output_type: multiple_choice\ndoc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\n'
              'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n',
    "mom_roll": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                'metric_list:\n  - metric: word_perplexity\n',
    "mom_gen": 'output_type: generate_until\ndoc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_target: "{{target}}"\n'
               'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
               'metric_list:\n  - metric: exact_match\n',
}


def test_lm_eval_adapter_on_local_task_yamls(ckpt, tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _LM_EVAL_ROWS))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for name, body in _LM_EVAL_TASKS.items():
        (tasks_dir / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n{body}")
    report = _run_json(capsys, ["eval", "lm-eval", "--ckpt", str(ckpt), "--tasks", "mom_mc,mom_roll,mom_gen",
                                "--include-path", str(tasks_dir), "--json"])
    res = report["results"]
    assert 0 <= res["mom_mc"]["acc,none"] <= 1 and res["mom_roll"]["word_perplexity,none"] > 1
    assert 0 <= res["mom_gen"]["exact_match,none"] <= 1

    # the adapter's numbers are the model's: direct log-likelihoods of a continuation and of a whole text
    from lm_eval.api.instance import Instance

    from mom.data.tokenizer import tokenizer

    model = load_model(ckpt)
    lm = lm_eval_adapter(model, batch_size=2)
    enc = tokenizer()
    ctx, cont = enc.encode_ordinary("Question: Which animal barks?\nAnswer:"), enc.encode_ordinary(" dog")
    req = lambda args: Instance("loglikelihood", {}, args, 0)  # noqa: E731
    (lp, is_greedy), = lm.loglikelihood([req(("Question: Which animal barks?\nAnswer: ", "dog"))])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont[:-1]]), causal_routing=True).logits[0].double(), -1)
    want = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    assert lp == pytest.approx(want, abs=1e-4)  # the context's trailing space moved into the continuation
    assert is_greedy == all(int(logp[len(ctx) - 1 + i].argmax()) == t for i, t in enumerate(cont))
    text = _LM_EVAL_ROWS[0]["text"]
    ids = enc.encode_ordinary(text)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[50256] + ids[:-1]]), causal_routing=True).logits[0].double(), -1)
    (rolling,) = lm.loglikelihood_rolling([req((text,))])
    assert rolling == pytest.approx(sum(logp[i, t].item() for i, t in enumerate(ids)), abs=1e-4)
    assert "unknown lm-eval task" in cli_error(capsys, ["eval", "lm-eval", "--ckpt", str(ckpt), "--tasks", "nope",
                                                      "--include-path", str(tasks_dir)])


def test_predictions_path_is_checked_before_fine_tuning(ckpt, tmp_path, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("fine-tuning started despite an unusable --predictions path")

    monkeypatch.setattr(mom.cli.eval, "run_xsum", never)
    xsum = ["eval", "xsum", "--ckpt", str(ckpt), "--data", str(XSUM), "--epochs", "1", "--predictions"]
    missing = tmp_path / "nodir" / "p.jsonl"
    assert f"--predictions {missing}: directory {missing.parent} does not exist" in cli_error(capsys, [*xsum, str(missing)])
    assert f"--predictions {tmp_path}: is a directory" in cli_error(capsys, [*xsum, str(tmp_path)])
    assert not missing.parent.exists()


def test_lm_eval_arguments_are_checked_up_front(ckpt, tmp_path, capsys):
    # checked before lm-eval is imported or the model loaded, so this runs without the optional extra
    lm = ["eval", "lm-eval", "--ckpt", str(ckpt), "--tasks", "t", "--include-path", str(tmp_path)]
    for limit in ("-1", "0", "2.5", "nan", "inf"):
        err = cli_error(capsys, [*lm, "--limit", limit])
        assert "--limit must be a whole number of examples ≥ 1 or a fraction in (0, 1), got" in err
    assert "--batch-size must be ≥ 1, got 0" in cli_error(capsys, [*lm, "--batch-size", "0"])
    assert "--num-fewshot must be ≥ 0, got -1" in cli_error(capsys, [*lm, "--num-fewshot", "-1"])
    assert _check_limit(0.25) == 0.25 and _check_limit(3.0) == 3 and isinstance(_check_limit(3.0), int)


def test_ppl_without_data_says_what_perplexity_needs(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/builtin here
    err = cli_error(capsys, ["eval", "ppl", "--ckpt", str(ckpt)])
    assert "no data to measure perplexity on: pass --data" in err and "routing" not in err


@pytest.mark.parametrize("stride", ["0", "-3", "64"])
def test_ppl_stride_zero_is_an_error_not_the_default(ckpt, tmp_path, capsys, stride):
    text = tmp_path / "t.txt"
    text.write_text("Some text to score, long enough for a few windows of the tiny model.")
    err = cli_error(capsys, ["eval", "ppl", "--ckpt", str(ckpt), "--data", str(text), "--stride", stride])
    assert f"--stride must be in [1, n_ctx - 1 = 63], got {stride}" in err
    with pytest.raises(MomError, match="got 0"):
        perplexity(MoM(tiny_config(n_ctx=16)), list(range(20)), stride=0)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_options_are_refused(ckpt, capsys, value):
    xsum = ["eval", "xsum", "--ckpt", str(ckpt), "--data", str(XSUM), "--epochs", "1", "--beams", "2"]
    # --opt=value: argparse would read a separate "-inf" as an option name
    assert f"--length-penalty must be a finite number, got {value}" in cli_error(capsys, [*xsum, f"--length-penalty={value}"])
    assert "--weight-decay must be a finite number ≥ 0" in cli_error(capsys, [*xsum, f"--weight-decay={value}"])
    assert "--lr must be a positive number" in cli_error(capsys, [*xsum, f"--lr={value}"])
    assert "--warmup must be a fraction of the updates in [0, 1)" in cli_error(capsys, [*xsum, f"--warmup={value}"])


@pytest.mark.parametrize("option, value, message", [
    ("--warmup", "2", "--warmup must be a fraction of the updates in [0, 1), got 2"),
    ("--warmup=-0.1", None, "--warmup must be a fraction of the updates in [0, 1), got -0.1"),
    ("--weight-decay=-1", None, "--weight-decay must be a finite number ≥ 0, got -1"),
    ("--max-len", "1", "--max-len must be ≥ 2, got 1"),
])
def test_glue_option_errors_name_the_option_and_its_range(ckpt, capsys, option, value, message):
    extra = [option] if value is None else [option, value]  # a negative value goes in as --opt=value
    err = cli_error(capsys, ["eval", "glue", "--ckpt", str(ckpt), "--task", "rt-polarity", *extra])
    assert message in err


def test_xsum_decoding_option_errors_name_the_option(ckpt, capsys):
    xsum = ["eval", "xsum", "--ckpt", str(ckpt), "--data", str(XSUM)]
    assert "--beams must be ≥ 1, got 0" in cli_error(capsys, [*xsum, "--beams", "0"])
    assert "--max-new-tokens must be ≥ 1, got 0" in cli_error(capsys, [*xsum, "--max-new-tokens", "0"])


def test_glue_max_len_above_n_ctx_is_capped_and_recorded(ckpt, capsys):
    argv = ["eval", "glue", "--ckpt", str(ckpt), "--task", "sst2", "--data", str(GLUE / "SST-2"), "--epochs", "1",
            "--max-train", "2", "--max-eval", "2", "--json"]
    assert main([*argv, "--max-len", "1000"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["params"]["max_len"] == 64  # what was used, not what was asked for
    assert "mom: note: --max-len 1000 is more than the model's n_ctx; using 64" in err
    assert main(argv) == 0  # the default 128 is capped too, without a note
    out, err = capsys.readouterr()
    assert json.loads(out)["params"]["max_len"] == 64 and "note" not in err
