"""Auditing any nn.Module: models written here (not from profiler.model), against analytic sums written here.

Counting conventions (DESIGN.md): a matmul [M, K] @ [K, N] is 2*M*N*K FLOP, its backward twice that;
causal attention forward 4*B*H*D*P with P = S(S+1)/2 unmasked pairs, backward twice the forward.
"""
from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from flopscale.profiler.audit_module import AuditError, audit_module, load_factory
from flopscale.profiler.devices import Ceilings

CEIL = Ceilings(flops={"fp32": 1.0e11}, bandwidth=1.0e10, device_name="test ceiling")


# ------------------------------------------------------------------ models written for the test


class SwiGLU(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.w_gate = nn.Linear(d, ff, bias=False)
        self.w_up = nn.Linear(d, ff, bias=False)
        self.w_down = nn.Linear(ff, d, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class MoE(nn.Module):
    """Dropless top-k routing: every token runs exactly k experts."""

    def __init__(self, d, ff, n_experts, k, k_attr="top_k"):
        super().__init__()
        setattr(self, k_attr, k)
        self._k = k
        self.router = nn.Linear(d, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d, ff) for _ in range(n_experts))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        w, idx = torch.softmax(self.router(flat), -1).topk(self._k, dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel():
                out = out.index_add(0, tok, expert(flat[tok]) * w[tok, slot, None])
        return out.reshape(x.shape)


class Block(nn.Module):
    def __init__(self, d, h, kv, ff, moe=None):
        super().__init__()
        self.h, self.kv, self.hd = h, kv, d // h
        self.attn_norm = nn.RMSNorm(d)
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, kv * self.hd, bias=False)
        self.wv = nn.Linear(d, kv * self.hd, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d)
        self.mlp = SwiGLU(d, ff) if moe is None else MoE(d, ff, *moe)

    def forward(self, x):
        B, S, d = x.shape
        y = self.attn_norm(x)
        q = self.wq(y).view(B, S, self.h, self.hd).transpose(1, 2)
        k = self.wk(y).view(B, S, self.kv, self.hd).transpose(1, 2)
        v = self.wv(y).view(B, S, self.kv, self.hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.wo(a.transpose(1, 2).reshape(B, S, d))
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, vocab=97, d=48, h=4, kv=2, ff=72, L=2, moe=None, tied=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, h, kv, ff, moe) for _ in range(L))
        self.norm = nn.RMSNorm(d)
        self.tied = tied
        self.out = None if tied else nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.tok(ids)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return F.linear(x, self.tok.weight) if self.tied else self.out(x)


def analytic(B, S, vocab=97, d=48, h=4, kv=2, ff=72, L=2, moe=None):
    """Model FLOPs of one training step (forward + backward = 3x forward), summed by hand."""
    T, hd, P = B * S, d // h, S * (S + 1) // 2
    per_layer = 2 * T * d * d + 2 * 2 * T * d * kv * hd + 2 * T * d * d  # Q, K and V, output
    per_layer += 4 * B * h * hd * P  # causal attention: scores and x V
    if moe is None:
        per_layer += 3 * 2 * T * d * ff
    else:
        E, k = moe[0], moe[1]
        per_layer += 2 * T * d * E + k * 3 * 2 * T * d * ff  # router, k experts per token
    return 3 * (L * per_layer + 2 * T * d * vocab)


def ids(B, S, vocab=97, seed=0):
    return torch.randint(0, vocab, (B, S), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ Done-when: Llama and MoE


def test_llama_written_here_matches_an_independent_sum():
    torch.manual_seed(0)
    model = Llama()
    B, S = 3, 29
    r = audit_module(model, ids(B, S), timed=False)
    exp = analytic(B, S)
    assert r.model_flops == pytest.approx(exp, rel=0.005)
    assert r.model_flops == exp  # exactly, in fact
    pc = r.params
    assert pc.total == sum(p.numel() for p in model.parameters())
    assert pc.embedding == 97 * 48 and pc.unembedding == 97 * 48
    assert pc.non_embedding == pc.total - 2 * 97 * 48
    assert pc.norms == (2 * 2 + 1) * 48
    assert pc.active == pc.total
    # phases: backward = 2 x forward; by module: the layers and the output layer hold all of it
    assert r.phases["backward"] == 2 * r.phases["forward"]
    assert r.by_module[""]["model_flops"] == r.model_flops
    assert r.by_module["layers"]["model_flops"] + r.by_module["out"]["model_flops"] == r.model_flops
    assert r.by_module["layers.0"]["model_flops"] == r.by_module["layers.1"]["model_flops"]
    assert r.breakdown["logits"]["model_flops"] == 3 * 2 * B * S * 48 * 97
    # groups by module name: wq/wk/wv -> QKV, wo -> output projection, mlp.* -> MLP; nothing left over
    T = B * S
    assert r.breakdown["qkv"]["model_flops"] == 3 * 2 * (2 * T * 48 * 48 + 2 * 2 * T * 48 * 24)
    assert r.breakdown["out_proj"]["model_flops"] == 3 * 2 * 2 * T * 48 * 48
    assert r.breakdown["mlp"]["model_flops"] == 3 * 2 * 3 * 2 * T * 48 * 72
    assert r.breakdown["other"]["model_flops"] == 0
    # the CPU attention recomputes Q K^T in the backward: executed, not model
    assert r.executed_flops - r.model_flops == 2 * 2 * B * 4 * 12 * (S * (S + 1) // 2)
    assert r.shape.n_layer == 2 and r.shape.n_head == 4 and r.shape.head_dim == 12
    # every published estimate is explained term by term
    for e in r.estimates:
        assert abs(e.residual) <= 1e-9 * r.model_flops, e.name


@pytest.mark.parametrize("k_attr", ["top_k", "n_active"])  # known from an attribute, or measured
def test_moe_written_here_matches_an_independent_sum(k_attr):
    torch.manual_seed(1)
    E, k = 4, 2
    model = Llama(moe=(E, k, k_attr))
    B, S = 2, 23
    r = audit_module(model, ids(B, S), timed=False)
    exp = analytic(B, S, moe=(E, k))
    assert r.model_flops == pytest.approx(exp, rel=0.005)
    assert r.model_flops == exp
    pc = r.params
    expert = 3 * 48 * 72
    assert pc.experts == 2 * E * expert and pc.router == 2 * 48 * E
    assert pc.total - pc.active == 2 * (E - k) * expert
    assert pc.non_embedding - pc.active_non_embedding == 2 * (E - k) * expert
    said = " ".join(r.assumptions)
    assert "layers.0.mlp.experts" in said and "layers.0.mlp.router" in said
    assert ("attribute" in said) == (k_attr == "top_k") and ("measured" in said) == (k_attr != "top_k")
    assert r.breakdown["router"]["model_flops"] == 3 * 2 * 2 * B * S * 48 * E
    six = next(e for e in r.estimates if e.name.startswith("6ND (active non-embedding"))
    assert six.flops == 6 * pc.active_non_embedding * B * S


def test_tied_output_layer_is_counted_once_and_its_matmuls_are_logits():
    torch.manual_seed(2)
    model = Llama(tied=True)
    B, S = 2, 11
    r = audit_module(model, ids(B, S), timed=False)
    assert r.params.unembedding == 0 and r.params.embedding == 97 * 48
    assert r.params.total == sum(p.numel() for p in model.parameters())
    assert r.breakdown["logits"]["model_flops"] == 3 * 2 * B * S * 48 * 97
    assert r.model_flops == analytic(B, S)


def test_dict_batch_and_a_model_that_returns_its_loss():
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Llama()

        def forward(self, input_ids, labels):
            logits = self.inner(input_ids)
            return {"loss": F.cross_entropy(logits.flatten(0, 1), labels.flatten()), "logits": logits}

    torch.manual_seed(3)
    x = ids(2, 9)
    r = audit_module(WithLoss(), {"input_ids": x, "labels": x}, timed=False)
    assert (r.batch, r.seq) == (2, 9) and r.model_flops == analytic(2, 9)


def test_profiler_audit_is_callable_and_times_with_a_labelled_peak():
    from flopscale import profiler

    torch.manual_seed(4)
    model = Llama(L=1)
    before = [p.detach().clone() for p in model.parameters()]
    r = profiler.audit(model, ids(2, 8), ceilings=CEIL, time_budget_s=0.05)
    assert profiler.audit.run_audit is not None  # still the module
    t = r.timing["step_s"]
    assert t > 0 and r.timing["repetitions"] >= 1
    assert r.mfu["value"] == pytest.approx(r.model_flops / t / 1.0e11)
    assert r.hfu["value"] == pytest.approx(r.executed_flops / t / 1.0e11)
    assert "test ceiling" in r.mfu["peak_source"]
    # the default optimizer (AdamW, lr 0) does the work of a step without changing the weights
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert r.breakdown["optimizer"]["nonmatmul_flops"] >= sum(p.numel() for p in model.parameters())  # >= 1 per element
    d = r.to_dict()
    for key in ("model_flops", "executed_flops", "six_nd", "estimates", "by_module", "phases", "params",
                "assumptions", "mfu"):
        assert key in d
    assert json.loads(json.dumps(d, default=str))["model_flops"] == r.model_flops
    text = str(r)
    assert "MFU" in text and "test ceiling" in text and "Table A4 convention" in text


def test_time_budget_bounds_a_slow_step():
    import time

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Llama(L=1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            time.sleep(0.15)
            return self.inner(x)

    model = Slow()
    r = audit_module(model, ids(1, 4), ceilings=CEIL, time_budget_s=0.05)
    # one counted step and one timed step: a budget below one step is not stretched
    assert r.timing["repetitions"] == 1
    assert model.calls == 2
    assert r.timing["step_s"] >= 0.15


def test_bad_inputs_raise_audit_errors():
    with pytest.raises(AuditError, match="no parameters"):
        audit_module(nn.Identity(), ids(1, 4))
    with pytest.raises(AuditError, match="token ids"):
        audit_module(Llama(), torch.randn(2, 3))
    with pytest.raises(AuditError, match="nn.Module"):
        audit_module(lambda x: x, ids(1, 4))


# ------------------------------------------------------------------ compiled steps


@pytest.mark.slow
def test_compiled_step_count_agrees_with_eager_and_both_are_timed():
    """torch.compile (inductor, the system C++ compiler on a CPU; ~20 s warm cache, ~60 s cold on two busy
    cores): the compiled graphs' count equals the eager count, and both steps are timed."""
    torch.manual_seed(5)
    model = Llama(L=1)
    r = audit_module(model, ids(2, 16), compile=True, ceilings=CEIL, time_budget_s=0.05)
    c = r.compiled
    assert "error" not in c, c.get("error")
    assert c["backend"] == "inductor"
    assert c["model_flops_forward_backward"] == c["eager_model_flops_forward_backward"] == r.model_flops
    assert c["model_flops"] == analytic(2, 16, L=1)
    assert c["graphs"] >= 2  # a forward and a backward graph
    assert c["timing"]["step_s"] > 0 and r.timing["step_s"] > 0 and c["compile_s"] > 0
    assert c["mfu"]["value"] == pytest.approx(r.model_flops / c["timing"]["step_s"] / 1.0e11)
    assert "compiled step" in str(r)


# ------------------------------------------------------------------ factories and the CLI

@pytest.fixture()
def model_file(tmp_path):
    src = tmp_path / "my_model.py"
    import inspect
    import sys

    body = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"
    body += "\n\n".join(inspect.getsource(c) for c in (SwiGLU, MoE, Block, Llama))
    body += ("\n\ndef make(**kw):\n    return Llama(**kw)\n\n"
             "def broken():\n    raise RuntimeError('no weights today')\n\n"
             "def empty():\n    return nn.Identity()\n")
    src.write_text(body)
    yield src
    for name in [n for n in sys.modules if n.startswith("_flopscale_user_model_")]:
        del sys.modules[name]


def test_load_factory_errors_are_one_sentence(model_file):
    assert isinstance(load_factory(f"{model_file}:make", '{"L": 1}'), nn.Module)
    cases = [
        (f"{model_file.parent}/nope.py:make", None, "no such file"),
        (f"{model_file}:broken", None, "broken() raised RuntimeError: no weights today"),
        (f"{model_file}:missing", None, "no callable 'missing'"),
        (f"{model_file}:make", "{L: 1", "not valid JSON"),
        ("no_such_pkg_xyz.models:make", None, "cannot import"),
        ("just_a_name", None, "PKG.MODULE:FACTORY"),
    ]
    for spec, fargs, msg in cases:
        with pytest.raises(AuditError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            load_factory(spec, fargs)


def test_cli_audits_a_model_file(model_file, capsys):
    from flopscale.profiler.cli import main

    rc = main(["audit", "--model", f"{model_file}:make", "--factory-args", '{"L": 1}', "--batch", "2",
               "--n-ctx", "12", "--vocab", "97", "--time-budget", "0.05", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.err == ""  # no progress with --json
    out = json.loads(cap.out)
    assert out["model_flops"] == analytic(2, 12, L=1)
    assert out["tokens"] == 24 and out["model"].endswith(":make")
    assert out["by_module"]["layers.0"]["model_flops"] > 0


@pytest.mark.parametrize("spec,msg", [("nope.py:make", "no such file"), ("{f}:broken", "raised RuntimeError"),
                                      ("{f}:empty", "no parameters"), ("{f}:make", "not valid JSON")])
def test_cli_bad_model_gives_one_line_and_exit_2(model_file, capsys, spec, msg):
    from flopscale.profiler.cli import main

    argv = ["audit", "--model", spec.format(f=model_file), "--batch", "1", "--n-ctx", "4", "--vocab", "97"]
    if msg == "not valid JSON":
        argv += ["--factory-args", "{oops"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("arch", ["llama", "moe"])
def test_cli_arch_counts_the_built_in_family_exactly(arch, capsys):
    from flopscale.profiler.cli import main
    from flopscale.profiler.flopcount import step_flops
    from flopscale.profiler.model import GPTConfig

    extra = ["--n-experts", "3", "--top-k", "2"] if arch == "moe" else []
    rc = main(["audit", "--arch", arch, "--n-layer", "1", "--d-model", "32", "--n-head", "4", "--n-kv-head", "2",
               "--n-ctx", "16", "--vocab", "50", "--batch", "2", "--time-budget", "0.05", "--json", *extra])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    cfg = GPTConfig(1, 32, 4, 16, 50, n_kv_head=2, arch=arch, **({"n_experts": 3, "top_k": 2} if extra else {}))
    assert out["model_flops"] == step_flops(cfg, 2).total
    assert out["config"]["arch"] == arch and out["breakdown"]["other"]["model_flops"] == 0


def test_progress_goes_to_a_terminal_only():
    from flopscale.profiler.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress("flopscale audit", stream=stream)
        p("timing step", 3, 0.4, 1.0)
        p.close()
    assert "timing step 3" in tty.getvalue() and "ETA 0.6 s" in tty.getvalue()
    assert pipe.getvalue() == ""
    off = Tty()
    Progress("x", enabled=False, stream=off)("timing step", 1, 0.1, 1.0)
    assert off.getvalue() == ""


def test_a_step_that_fails_is_one_clear_line(model_file, capsys):
    from flopscale.profiler.cli import main

    # token ids beyond the model's vocabulary: the embedding raises inside the step
    rc = main(["audit", "--model", f"{model_file}:make", "--batch", "1", "--n-ctx", "4", "--vocab", "5000"])
    err = capsys.readouterr().err
    assert rc == 2 and "training step failed: IndexError" in err and len(err.strip().splitlines()) == 1, err


def test_experts_stacked_in_3d_weights_are_found():
    from flopscale.profiler.params import inventory

    class StackedExperts(nn.Module):
        def __init__(self, E, d, ff):
            super().__init__()
            self.w_in = nn.Parameter(torch.randn(E, d, ff))
            self.w_out = nn.Parameter(torch.randn(E, ff, d))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_experts_per_tok = 2
            self.gate = nn.Linear(16, 6, bias=False)
            self.experts = StackedExperts(6, 16, 24)

    inv = inventory(nn.Sequential(Layer()))
    (g,) = inv.experts
    assert (g.path, g.router, g.n_experts, g.expert_params, g.top_k) == ("0.experts", "0.gate", 6, 2 * 16 * 24, 2)
    assert inv.counts.total - inv.counts.active == 4 * 2 * 16 * 24


def test_the_model_goes_back_to_its_mode():
    model = Llama(L=1).eval()
    audit_module(model, ids(1, 4), timed=False)
    assert not model.training


def test_a_model_without_attention_prints_no_nan():
    """An estimate of 0 FLOP (no attention layer seen, so Appendix F's Table A4 convention is
    empty) has no ratio: the report says n/a, never nan."""
    class MLPLM(nn.Module):
        def __init__(self, vocab=64, d=32):
            super().__init__()
            self.emb, self.mlp, self.head = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, vocab, bias=False)

        def forward(self, x):
            return self.head(torch.relu(self.mlp(self.emb(x))))

    torch.manual_seed(5)
    r = audit_module(MLPLM(), ids(2, 8, vocab=64), ceilings=CEIL, time_budget_s=0.05)
    assert any(e.flops == 0 for e in r.estimates)
    text = str(r)
    assert " nan" not in text.lower()
    assert "n/a" in text
