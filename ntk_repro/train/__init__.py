"""Training: the one optax loop (:mod:`.loop`), its jitted steps (:mod:`.steps`), optimisers,
schedules and losses (:mod:`.optim`) and Orbax checkpoints with resume (:mod:`.checkpoint`)."""
