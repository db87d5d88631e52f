"""Training: optimizer groups, schedule, exact resume after Ctrl+C, DDP equals one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, run

from gptcli.config import ModelConfig, TrainConfig
from gptcli.hardware import sleeping_omp_threads
from gptcli.loop import lr_factor, make_optimizers
from gptcli.model import GPT
from gptcli.optim import OwnMuon, split_parameters


@pytest.mark.parametrize("family", ["modern", "gpt2"])
def test_optimizer_groups_cover_every_parameter_once(family: str) -> None:
    model = GPT(
        ModelConfig(family=family, vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    )
    optimizers = make_optimizers(model, TrainConfig(), torch.device("cpu"))
    seen = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    assert len(set(seen)) == len(seen)
    if family == "modern":
        hidden, other = split_parameters(model)
        assert all(p.dim() == 2 for p in hidden)
        others = {id(p) for p in other}
        assert id(model.lm_head.weight) in others and id(model.transformer["wte"].weight) in others
        assert len(hidden) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer
        assert type(optimizers[0]).__name__ in ("Muon", "OwnMuon")


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, torch.float32])  # float32: the CPU's
def test_own_muon_matches_torch_muon(ns_dtype: torch.dtype) -> None:
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("this torch has no torch.optim.Muon")
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(48, 16))
    b = torch.nn.Parameter(a.detach().clone())
    theirs = torch.optim.Muon([a], lr=0.02, weight_decay=0.1)
    ours = OwnMuon([b], lr=0.02, weight_decay=0.1, ns_dtype=ns_dtype)
    for _ in range(5):
        grad = torch.randn(48, 16)
        a.grad, b.grad = grad.clone(), grad.clone()
        theirs.step()
        ours.step()
    torch.testing.assert_close(a, b, atol=5e-3, rtol=0)


def test_own_muon_steps_each_matrix_as_if_alone() -> None:
    """Matrices of one shape (tall ones transposed) are orthogonalised as one stack."""
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 48), (48, 16), (32, 32), (32, 32), (24, 40)]
    together = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in together]
    stacked = OwnMuon(together, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32)
    singles = [OwnMuon([p], lr=0.02, weight_decay=0.1, ns_dtype=torch.float32) for p in alone]
    for _ in range(3):
        for a, b in zip(together, alone, strict=True):
            grad = torch.randn(a.shape)
            a.grad, b.grad = grad.clone(), grad.clone()
        stacked.step()
        for opt in singles:
            opt.step()
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_schedules() -> None:
    wsd = TrainConfig(warmup_steps=10, schedule="wsd", cooldown=0.4)
    assert lr_factor(0.0, 0, wsd) == pytest.approx(0.1)
    assert lr_factor(0.5, 50, wsd) == 1.0
    assert lr_factor(0.8, 80, wsd) == pytest.approx(0.5)
    assert lr_factor(1.0, 100, wsd) == pytest.approx(0.0)
    cosine = TrainConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0.5, 50, cosine) == pytest.approx(0.55)


def weights(home: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(home / "models" / name / "model.safetensors"))


def test_interrupted_then_resumed_equals_uninterrupted(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [str(corpus), "--tokenizer", "char", "--max-steps", "30", "--dropout", "0.1", *TINY]
    full = json.loads(run("train", *args, "--name", "full", "--json").stdout)

    from gptcli.data import Batches

    original = Batches.sample
    calls = {"n": 0}

    def sample_then_ctrl_c(self, generator=None):  # type: ignore[no-untyped-def]
        if generator is None:
            calls["n"] += 1
            if calls["n"] == 12:  # Ctrl+C arrives during step 12
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, generator)

    monkeypatch.setattr(Batches, "sample", sample_then_ctrl_c)
    cut = json.loads(run("train", *args, "--name", "cut", "--json").stdout)
    assert cut["stopped"] == "interrupted" and cut["steps"] == 12
    monkeypatch.setattr(Batches, "sample", original)
    resumed = json.loads(run("train", *args, "--name", "cut", "--resume", "--json").stdout)
    assert resumed["steps"] == 30 and resumed["stopped"] == "max_steps"
    assert resumed["val_loss"] == full["val_loss"]
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=1e-6)
    a, b = weights(home, "full"), weights(home, "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_missing_and_changed(home: Path, corpus: Path, tmp_path: Path) -> None:
    result = run("train", str(corpus), "--name", "ghost", "--resume", code=1)
    assert "no model named 'ghost'" in result.stderr
    run("train", str(corpus), "--name", "m", "--tokenizer", "char", "--max-steps", "2", *TINY)
    other = tmp_path / "other.txt"
    other.write_text("different text entirely. " * 200)
    result = run("train", str(other), "--name", "m", "--resume", "--max-steps", "4", code=1)
    assert "differs" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(home: Path, corpus: Path) -> None:
    common = [
        str(corpus),
        "--tokenizer",
        "char",
        "--max-steps",
        "15",
        "--json",
        "--device",
        "cpu",
        *TINY,
    ]
    single = json.loads(run("train", *common, "--name", "single").stdout)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPTCLI_HOME": str(home)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        "--master-addr=127.0.0.1",
        "-m",
        "gptcli",
        "train",
        *common,
        "--name",
        "ddp",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout + proc.stderr[-2000:]  # only rank 0 prints
    ddp = json.loads(lines[0])
    assert ddp["steps"] == single["steps"] == 15, (ddp, single)
    # same examples, summed in another order (and bf16 Newton-Schulz in Muon): tiny drift
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=2e-3), (ddp, single)
    run("generate", "Once", "-m", "ddp", "-n", "5")  # a normal model in the store


def test_gpu_switches_decide_on_device() -> None:
    from gptcli.runtime import autocast_dtype, should_compile

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert should_compile(TrainConfig(), cuda) and not should_compile(TrainConfig(), cpu)
    assert should_compile(TrainConfig(compile=True), cpu)
    assert not should_compile(TrainConfig(compile=False), cuda)
    assert autocast_dtype(TrainConfig(), cuda) == torch.bfloat16
    assert autocast_dtype(TrainConfig(), cpu) is None
    assert autocast_dtype(TrainConfig(dtype="bfloat16"), cpu) == torch.bfloat16


def test_bf16_autocast_and_grad_accumulation_train_on_cpu(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_linear = torch.nn.functional.linear
    dtypes: set[torch.dtype] = set()  # of the matmuls that training runs

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real_linear(*args, **kwargs)
        if torch.is_grad_enabled():
            dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    run("train", str(corpus), "--tokenizer", "char", "--max-steps", "2", "--name", "f32", *TINY)
    assert dtypes == {torch.float32}
    dtypes.clear()
    out = json.loads(
        run(
            "train",
            str(corpus),
            "--tokenizer",
            "char",
            "--max-steps",
            "25",
            "--dtype",
            "bfloat16",
            "--grad-accum",
            "2",
            "--json",
            *TINY,
        ).stdout
    )
    assert dtypes == {torch.bfloat16}  # autocast: every training matmul ran in bfloat16
    monkeypatch.setattr(torch.nn.functional, "linear", real_linear)
    history = json.loads((home / "models/stories/train.json").read_text())["history"]
    assert out["steps"] == 25 and out["tokens"] == 25 * 8 * 32
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.5
    result = run(
        "train",
        str(corpus),
        "--name",
        "odd",
        *TINY,
        "--batch-size",
        "6",
        "--grad-accum",
        "4",
        code=1,
    )
    assert "multiple" in result.stderr


@pytest.mark.parametrize(("load", "policy"), [(0.3, None), (5.0, "PASSIVE")])
def test_training_threads_sleep_only_on_busy_cores(
    monkeypatch: pytest.MonkeyPatch, load: float, policy: str | None
) -> None:
    """Sleeping OpenMP threads cost training 1.7x on idle cores and save it 10x on busy ones."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    sleeping_omp_threads(only_when_busy=True)
    assert os.environ.get("OMP_WAIT_POLICY") == policy
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # what the user set wins
    sleeping_omp_threads(only_when_busy=True)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_training_leaves_the_cores_other_work_keeps_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured cores busy elsewhere: training takes the rest (at least one thread); an idle
    machine keeps every thread, and OMP_NUM_THREADS set by the user wins."""
    import time

    from gptcli.cli.training import share_the_cores
    from gptcli.hardware import CoreUse

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        assert share_the_cores(0.2) is None
        assert torch.get_num_threads() == 2
        said = share_the_cores(0.3)  # a quarter of a core busy elsewhere counts it as taken
        assert torch.get_num_threads() == 1
        assert said is not None and said.startswith("training on 1 of 2 threads")
        torch.set_num_threads(2)
        share_the_cores(5.0)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        share_the_cores(1.5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    use = CoreUse()  # our own work is not counted as another's
    end = time.perf_counter() + 0.4
    while time.perf_counter() < end:
        pass
    assert 0.0 <= use.others() < (os.cpu_count() or 1)


FAULTS_PER_STEP = """
import resource, sys, torch
from gptcli.config import ModelConfig
from gptcli.hardware import keep_freed_memory
from gptcli.model import GPT
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
config = ModelConfig(family="modern", vocab_size=65, block_size=256, n_layer=1, n_head=3, n_embd=96)
model = GPT(config)
opt = torch.optim.AdamW(model.parameters())
x = torch.randint(0, 65, (8, 256))
def step():
    model(x, targets=x)[1].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def test_cpu_training_keeps_freed_memory_for_the_next_step() -> None:
    """A fresh process per setting: mallopt is process-wide, and earlier tests set it here."""
    from gptcli.hardware import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc's malloc on 64-bit Linux")

    def faults(mode: str) -> float:
        cmd = [sys.executable, "-c", FAULTS_PER_STEP, mode]
        return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)

    given_back, kept = faults("default"), faults("keep")
    assert kept < given_back / 3, (kept, given_back)


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_training_commands_leave_busy_cores_to_other_work(
    command: str, base_home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptcli.hardware import CoreUse

    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("one thread: no core to give up")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(CoreUse, "others", lambda self: 1.0)  # one core kept busy elsewhere
    start = ["train", str(corpus), "--tokenizer", "char", "--preset", "tiny", "--block-size", "32"]
    if command == "finetune":
        start = ["finetune", "tiny", str(corpus)]
    try:
        result = run(*start, "--name", "shared", "--max-steps", "2", "--batch-size", "8")
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert used == threads - 1
    assert f"training on {threads - 1} of {threads} threads" in result.stderr


def test_busy_time_leaves_out_hypervisor_steal(monkeypatch: pytest.MonkeyPatch) -> None:
    import gptcli.hardware as hardware

    class Stat:  # /proc/stat's first line: user nice system idle iowait irq softirq steal
        def __init__(self, path: str) -> None:
            pass

        def read_text(self) -> str:
            return "cpu  100 20 30 5000 400 5 6 9000 0 0\ncpu0 ...\n"

    monkeypatch.setattr(hardware, "Path", Stat)
    ticks = os.sysconf("SC_CLK_TCK")
    assert hardware.busy_seconds() == pytest.approx((100 + 20 + 30 + 5 + 6) / ticks)
