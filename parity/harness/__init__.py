"""The parity harness: a torch model next to its Flax port, compared layer by layer, gradient
by gradient and step by step. Everything takes one :class:`~parity.harness.pair.ModelPair`;
docs/HARNESS.md lists the modules, lower ones first. :mod:`parity.testing` wraps the harness
as assertions for other projects' test suites.
"""
