"""Periodic and operations jobs: the rollup refresh (``jobs.rollups``), re-chunk and
repartition (``jobs.rechunk``) and the missing-data sweep (``jobs.sweep``).

Retention and archive (``retention/``) are ops jobs too; they keep their own top-level part
because the design names it. Jobs expose plain functions and classes; the commands that start
them, their output and their signal handling live in the composition root (``rpmstore.cli``).
"""
