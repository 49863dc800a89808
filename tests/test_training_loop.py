import torch

from alad.training.loop import ResumableLoop, optimizer_step, rng_state, set_rng_state


def batches_for_epoch(epoch: int) -> list[str]:
    return [f"e{epoch}b{i}" for i in range(3 + epoch)]  # epochs may differ in length


def make_loop(saves: list, **kwargs) -> ResumableLoop:
    return ResumableLoop(2, batches_for_epoch, lambda *position: saves.append(position), show_progress=False, **kwargs)


def test_uninterrupted_run_visits_every_batch_and_saves_each_epoch_end():
    seen, saves, ends = [], [], []
    loop = make_loop(saves)
    assert loop.total_steps() == 7
    assert loop.run(lambda b: seen.append(b) or {}, end_epoch=lambda e: ends.append((e, len(saves))))
    assert seen == batches_for_epoch(0) + batches_for_epoch(1)
    assert ends == [(0, 0), (1, 1)]  # end_epoch runs before that epoch's checkpoint
    assert saves == [(1, 0, 3), (2, 0, 7)]
    assert loop.step == 7


def test_stopped_run_resumes_at_the_next_batch_and_replays_nothing():
    seen, saves = [], []
    first = make_loop(saves, stop_after_steps=5)
    assert first.run(lambda b: seen.append(b) or {}) is False
    assert saves[-1] == (1, 2, 5)  # stopped before batch 2 of epoch 1, after 5 steps
    resumed = make_loop(saves)
    resumed.resume_at(*saves[-1])
    assert resumed.run(lambda b: seen.append(b) or {}) is True
    assert seen == batches_for_epoch(0) + batches_for_epoch(1)
    assert resumed.step == 7


def test_checkpoint_cadence_counts_global_steps():
    saves = []
    make_loop(saves, checkpoint_every=2).run(lambda b: {})
    assert saves == [(0, 2, 2), (1, 0, 3), (1, 1, 4), (1, 3, 6), (2, 0, 7)]


def test_optimizer_step_clips_the_global_gradient_norm():
    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optimizer_step((weight * 100.0).sum(), optimizer, scheduler, [weight], grad_clip=1.0)
    assert torch.allclose(weight.detach(), torch.full((4,), 0.5))  # gradient 100 per entry, clipped to norm 1
    assert scheduler.last_epoch == 1


def test_rng_state_round_trip_and_old_checkpoints():
    torch.manual_seed(3)
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    set_rng_state(state["cpu"])  # checkpoints written before CUDA support hold the bare CPU state
    assert torch.equal(torch.rand(3), first)


def test_adamw_is_fused_where_it_can_be_and_steps_as_adamw():
    from alad.training.loop import adamw

    torch.manual_seed(0)
    fused_model, plain_model = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    plain_model.load_state_dict(fused_model.state_dict())
    groups = [{"params": [fused_model.weight], "lr": 1e-2}, {"params": [fused_model.bias], "lr": 1e-1}]
    fused = adamw(groups, weight_decay=0.01)
    plain = torch.optim.AdamW(
        [{"params": [plain_model.weight], "lr": 1e-2}, {"params": [plain_model.bias], "lr": 1e-1}], weight_decay=0.01
    )
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    x = torch.randn(5, 6)
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
    assert torch.allclose(fused_model.weight, plain_model.weight, atol=1e-6)
    assert torch.allclose(fused_model.bias, plain_model.bias, atol=1e-6)
    assert not adamw([torch.zeros(2, dtype=torch.long, requires_grad=False)], lr=1.0).defaults["fused"]  # no float
