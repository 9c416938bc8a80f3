"""core: the small torch-free layer every room may import, and which imports no room.

What several rooms share lives here once: the error type (:mod:`core.errors`), atomic writes
(:mod:`core.atomic`), argparse value types (:mod:`core.argtypes`), the 8-bit readout constants
(:mod:`core.constants`), the bundle manifest verifier (:mod:`core.bundle`), readout files
(:mod:`core.readouts`), the host runtimes (:mod:`core.runtimes`), and the numpy prior network
and arithmetic coder of the prior payload (:mod:`core.prior_coder`, :mod:`core.arith`).
Standard library and numpy only (docs/DESIGN.md, "Rooms and arrows").
"""
__version__ = "0.1.0"
