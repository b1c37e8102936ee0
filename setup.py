"""Builds pgdr's one native module, pgdr._walsum (the WAL summary find-disaster and PITR
read; see src/pgdr/native/walsum.c). Everything else is in pyproject.toml. Without a
compiler the build of the module may fail: pgdr then reads WAL with pg_waldump."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pgdr._walsum", ["src/pgdr/native/walsum.c"],
                             extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-unused-function"],
                             optional=True)])
