"""Structured derivatives: the eNTK from activations and cotangents per weight use, without
the Jacobian. :mod:`.analysis` reads the model's jaxpr into rules per parameter leaf,
:mod:`.uses` finds each leaf's uses, :mod:`.factors` computes the factors, :mod:`.contract`
chooses and runs each leaf's contraction, and :mod:`.kernel` assembles the kernel and its
cost model for ``auto``."""
