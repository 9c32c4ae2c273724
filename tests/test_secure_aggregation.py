"""Privacy mode 2 (secure aggregation) on real tasks: the same seeded task trains to the same model
as in plain mode, up to quantisation, while what the aggregator receives from each participant
is useless on its own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest

from client import Task, ValidationFailed
from ml.data import load_dataset
from ml.keras_model import compile_model, evaluate, model_from_json
from ml.payload import read_model_payload
from ml.prepare import prepare
from ml.secagg.encoding import ModelLayout
from ml.secagg.masking import dequantize
from schema import dataplane
from streams.codec import bundle_to_weights, decode_bundle
from streams.reader import PayloadReader, Received
from tests.conftest import ApiProcess, eventually, unique
from tests.secure_support import ProtocolParticipant, started_task
from tests.training_support import Member, daemon_env, member, spawn, wait_all

pytestmark = pytest.mark.integration

DIGITS = {"quorum": 2, "rounds": 2, "epochs": 3, "batch_size": 32, "learning_rate": 0.01,
          "model": "digits-mlp", "training_size": 500, "seed": 31337}


def train(api: ApiProcess, broker: Any, prefix: str, tmp: Path, people: list[Member], pom: int,
          definition: dict[str, Any], data: str = "digits") -> Task:
    """One seeded task in this privacy mode, with the real daemons, to its end."""
    alice, *sites = people
    name = unique(f"pom{pom}")
    alice.client.create_task(name, definition, pom=pom)
    for site in sites:
        site.client.join(name)
    logs = {who: tmp / f"{name}-{who}.log" for who in ("aggregator", *(s.name for s in sites))}
    processes = {"aggregator": spawn(["aggregate", name, "--eval-data", data, "--eval-shard", "3/3",
                                      "--round-timeout", "300"],
                                     daemon_env(api, alice, broker.bootstrap, prefix), logs["aggregator"])}
    for index, site in enumerate(sites, start=1):
        processes[site.name] = spawn(["participate", name, "--dataset", data, "--shard", f"{index}/3",
                                      "--output", str(tmp / site.name)],
                                     daemon_env(api, site, broker.bootstrap, prefix), logs[site.name])
    wait_all(processes, logs, timeout_s=600)
    return alice.client.get_task(name)


def final_weights(owner: Member, task: Task) -> list[np.ndarray]:
    _, content = owner.client.download_model(task.name)
    return read_model_payload(content)[1]


def test_secure_aggregation_trains_the_plain_model(api: ApiProcess, broker: Any, topic_prefix: str,
                                                   tmp_path: Path) -> None:
    """POM 2 gives the POM 1 model of the same seeded task, up to the quantisation error; its
    rounds record no per-participant sample counts (the aggregator never learns them)."""
    people = [member(api, who) for who in ("alice", "john", "jack")]
    plain = train(api, broker, topic_prefix, tmp_path, people, 1, DIGITS)
    secure = train(api, broker, topic_prefix, tmp_path, people, 2, DIGITS)

    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(final_weights(people[0], plain),
                                                                     final_weights(people[0], secure)))
    accuracies = [people[0].client.rounds(t.name)[-1].eval_metrics["accuracy"] for t in (plain, secure)]
    print(f"digits: max |w_pom1 - w_pom2| = {difference:.3g}; accuracy pom 1 {accuracies[0]:.4f}, "
          f"pom 2 {accuracies[1]:.4f}")
    assert difference < 1e-5
    assert abs(accuracies[0] - accuracies[1]) <= 1 / 599  # at most one held-out digit differs
    rounds = people[0].client.rounds(secure.name)
    assert all(r.samples == {} and sorted(r.participants) == sorted(p.name for p in people[1:]) for r in rounds)
    kinds = {e.type for e in people[0].client.task_events(secure.name)}
    assert "UpdateRejected" not in kinds, people[0].client.task_events(secure.name)


# --- dropouts, with members that speak the protocol but do not train ----------------------------

SECURE = {"quorum": 3, "rounds": 2, "model": "digits-mlp", "training_size": 100, "round_timeout_s": 8,
          "seed": 5}
STEPS_OF = {"alice": 0.0, "john": 0.01, "jack": 0.02, "jill": 0.04}


def run_protocol_task(api: ApiProcess, broker: Any, prefix: str, tmp: Path, definition: dict[str, Any],
                      vanish: dict[str, tuple[int, str]], pom: int = 2, expect_ok: bool = True
                      ) -> tuple[Member, Task, dict[str, ProtocolParticipant], Path]:
    """A secure task whose three members are protocol participants; some vanish where told."""
    people = [member(api, who) for who in ("alice", "john", "jack", "jill")]
    name = unique("secure")
    started_task(people, definition, pom, name)
    log = tmp / f"{name}-aggregator.log"
    aggregator = spawn(["aggregate", name, "--round-timeout", "60"],
                       daemon_env(api, people[0], broker.bootstrap, prefix), log)
    owner = people[0]
    assert eventually(lambda: owner.client.get_task(name).status == "STARTED", 60), log.read_text()
    task = owner.client.get_task(name)
    sites = {}
    for who, label in zip(people[1:], ("john", "jack", "jill")):
        sites[label] = ProtocolParticipant(broker.bootstrap, who, task, STEPS_OF[label], 100 * (1 + len(sites)),
                                           vanish.get(label))
        sites[label].start()
    code = aggregator.wait(180)
    for site in sites.values():
        site.stop.set()
        site.join(10)
        assert site.error is None, f"{site.who.name}: {site.error}"
    assert (code == 0) == expect_ok, f"aggregator exited {code}:\n{log.read_text()}"
    return owner, owner.client.get_task(name), sites, log


def round_model(owner: Member, task: Task, round_no: int) -> list[np.ndarray]:
    recorded = owner.client.rounds(task.name)[round_no - 1]
    _, content = owner.client.download_model(task.name, sha256=recorded.model_sha256)
    return read_model_payload(content)[1]


def expected_step(sites: dict[str, ProtocolParticipant], members: list[str]) -> float:
    """The FedAvg step of the members' known inputs: sum of samples x step over sum of samples."""
    chosen = [s for s in sites.values() if s.who.name in members]
    return sum(s.samples * s.step for s in chosen) / sum(s.samples for s in chosen)


def test_a_member_vanishing_after_its_masked_input_is_unmasked_from_the_others_shares(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """Jill sends her masked input in round 1, then vanishes before revealing: the round still
    completes with her input (its self mask rebuilt from the others' shares); round 2 goes on
    without her (min_updates 2) and records her missed round."""
    owner, task, sites, _ = run_protocol_task(api, broker, topic_prefix, tmp_path,
                                              {**SECURE, "min_updates": 2}, {"jill": (1, "reveal")})
    rounds = owner.client.rounds(task.name)
    everyone = sorted(s.who.name for s in sites.values())
    assert sorted(rounds[0].participants) == everyone
    assert sorted(rounds[1].participants) == sorted(n for n in everyone if n != sites["jill"].who.name)
    for number, record in ((1, rounds[0]), (2, rounds[1])):
        got = round_model(owner, task, number)
        start = sites["john"].globals[number]
        step = expected_step(sites, record.participants)
        assert max(float(np.max(np.abs(g - (s + step)))) for g, s in zip(got, start)) < 1e-6
    missed = [e.data for e in owner.client.task_events(task.name) if e.type == "ParticipantMissedRound"]
    assert missed == [{"round": 2, "username": sites["jill"].who.name}]


def test_a_member_vanishing_before_its_masked_input_is_left_out(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """Jill shares her secrets in round 1 but never sends her masked input: her pairwise masks
    are removed with her rebuilt key, and the round completes with John and Jack alone."""
    owner, task, sites, _ = run_protocol_task(api, broker, topic_prefix, tmp_path,
                                              {**SECURE, "rounds": 1, "min_updates": 2}, {"jill": (1, "masked")})
    record = owner.client.rounds(task.name)[0]
    assert sorted(record.participants) == sorted([sites["john"].who.name, sites["jack"].who.name])
    got, start = round_model(owner, task, 1), sites["john"].globals[1]
    step = expected_step(sites, record.participants)
    assert max(float(np.max(np.abs(g - (s + step)))) for g, s in zip(got, start)) < 1e-6


def test_fewer_members_than_the_threshold_fail_the_round_naming_who_is_missing(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """With a threshold of 3, one member vanishing before its masked input fails the task, and
    the failure names her."""
    _, task, sites, _ = run_protocol_task(api, broker, topic_prefix, tmp_path,
                                              {**SECURE, "secagg_threshold": 3}, {"jill": (1, "masked")},
                                              expect_ok=False)
    assert task.status == "FAILED"
    reason = task.failure_reason or ""
    assert "threshold of 3" in reason and sites["jill"].who.name in reason, reason


# --- what the aggregator receives is useless alone -----------------------------------------------

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_TASK = {"quorum": 2, "rounds": 1, "epochs": 1, "batch_size": 64, "learning_rate": 0.002,
              "model": "mnist-cnn", "training_size": 600, "seed": 1234}


def updates_on(bootstrap: str, task: Task) -> dict[str, Any]:
    """Every update payload on the task's updates topic, by sender, decoded."""
    found: dict[str, Any] = {}
    with PayloadReader(bootstrap, [str(task.topics.updates)]) as reader:
        for _ in range(40):
            for delivery in reader.poll(0.5):
                if isinstance(delivery, Received) and delivery.payload.kind == dataplane.UPDATE:
                    found[delivery.payload.sender] = decode_bundle(delivery.payload.data)
            if len(found) == len(task.participants):
                break
    return found


def test_a_masked_input_alone_says_nothing_of_its_update(api: ApiProcess, broker: Any, topic_prefix: str,
                                                         tmp_path: Path) -> None:
    """On MNIST, POM 2 trains POM 1's model up to quantisation; and each masked input the
    aggregator received, decoded as if it were that member's update, has no correlation with the
    member's true update (the same seeded training, seen in clear in the POM 1 task) and, loaded
    as a model, scores at chance."""
    people = [member(api, who) for who in ("alice", "john", "jack")]
    data = f"mnist:{MNIST}"
    plain = train(api, broker, topic_prefix, tmp_path, people, 1, MNIST_TASK, data)
    secure = train(api, broker, topic_prefix, tmp_path, people, 2, MNIST_TASK, data)
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(final_weights(people[0], plain),
                                                                     final_weights(people[0], secure)))
    accuracies = [people[0].client.rounds(t.name)[-1].eval_metrics["accuracy"] for t in (plain, secure)]
    print(f"mnist: max |w_pom1 - w_pom2| = {difference:.3g}; accuracy pom 1 {accuracies[0]:.4f}, "
          f"pom 2 {accuracies[1]:.4f}")
    assert difference < 1e-5 and abs(accuracies[0] - accuracies[1]) < 0.002

    meta, initial = read_model_payload(broadcast_of(broker.bootstrap, secure, dataplane.ARCHITECTURE))
    true_updates, masked = updates_on(broker.bootstrap, plain), updates_on(broker.bootstrap, secure)
    layout = ModelLayout.of(initial, secure.definition, 2, 2)
    evaluation = prepare(load_dataset(data, shard="3/3"), meta.input_shape)
    model = compile_model(model_from_json(meta.architecture), meta.learning_rate)
    for who in (p.name for p in people[1:]):
        true = np.concatenate([(w - g).ravel() for w, g in zip(bundle_to_weights(true_updates[who]), initial)])
        seen = dequantize(np.asarray(masked[who].arrays["masked"]), layout.scale)
        as_update = seen[:layout.size] / seen[layout.size]  # as if it were (w - g) x n, and n
        r = float(np.corrcoef(as_update, true)[0, 1])
        model.set_weights(unflatten(as_update, initial))
        accuracy = evaluate(model, evaluation)["accuracy"]
        print(f"{who}: correlation of the masked input with the true update {r:+.5f}; "
              f"its accuracy as a model {accuracy:.4f}")
        assert abs(r) < 0.01
        assert accuracy < 0.2


def unflatten(step: np.ndarray, start: list[np.ndarray]) -> list[np.ndarray]:
    arrays, offset = [], 0
    for g in start:
        arrays.append((g + step[offset:offset + g.size].reshape(g.shape)).astype(np.float32))
        offset += g.size
    return arrays


def broadcast_of(bootstrap: str, task: Task, kind: str) -> bytes:
    """The first broadcast of this kind on the task's topic."""
    with PayloadReader(bootstrap, [str(task.topics.broadcast)]) as reader:
        for _ in range(40):
            for delivery in reader.poll(0.5):
                if isinstance(delivery, Received) and delivery.payload.kind == kind:
                    return delivery.payload.data
    raise AssertionError(f"no {kind} broadcast on the topic")


# --- privacy mode 3: distributed differential privacy and its accountant ----------------------------


def test_pom3_records_the_epsilon_dp_accounting_gives_and_stops_at_the_target(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """Each round records epsilon so far, equal to dp-accounting's RDP accountant computed here for
    the same noise, rounds and delta; with a target between rounds 2 and 3, the task completes
    after round 2, saying why."""
    noise, delta = 1.1, 1e-5

    def spent(rounds: int) -> float:
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(noise), rounds)
        return float(accountant.get_epsilon(delta))

    target = (spent(2) + spent(3)) / 2
    definition = {**SECURE, "rounds": 5, "clip_norm": 1.0, "noise_multiplier": noise, "delta": delta,
                  "target_epsilon": target}
    owner, task, _, log = run_protocol_task(api, broker, topic_prefix, tmp_path, definition, {}, pom=3)

    rounds = owner.client.rounds(task.name)
    assert [r.round for r in rounds] == [1, 2], log.read_text()
    assert [r.epsilon for r in rounds] == pytest.approx([spent(1), spent(2)], rel=1e-9)
    assert task.status == "COMPLETED" and task.epsilon == pytest.approx(spent(2), rel=1e-9)
    assert "privacy budget" in (task.completion_reason or "") and f"{spent(3):.3f}" in (task.completion_reason or "")
    completed = [e for e in owner.client.task_events(task.name) if e.type == "TaskCompleted"][0]
    assert completed.data["reason"] == task.completion_reason


def test_privacy_modes_the_platform_does_not_implement_are_refused(api: ApiProcess) -> None:
    """POM 4 to 6 are 422s naming the modes that exist; POM 2 and 3 say what they need."""
    alice = member(api, "alice")
    for pom, definition, words in (
            (4, {"quorum": 2, "rounds": 1}, "implements 1 (plain), 2 (secure aggregation), 3"),
            (2, {"quorum": 1, "rounds": 1, "training_size": 10}, "quorum of at least 2"),
            (2, {"quorum": 2, "rounds": 1}, "needs training_size or max_samples"),
            (2, {"quorum": 2, "rounds": 1, "training_size": 10, "aggregation": "median"}, "needs each update"),
            (3, {"quorum": 2, "rounds": 1, "training_size": 10}, "needs noise_multiplier"),
            (1, {"quorum": 2, "rounds": 1, "noise_multiplier": 1.0}, "needs clip_norm")):
        with pytest.raises(ValidationFailed, match=re.escape(words)):
            alice.client.create_task(unique("pom"), {"model": "digits-mlp", **definition}, pom=pom)
