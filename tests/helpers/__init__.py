"""Shared test helpers that are not tests: fake data sets in the standard file formats (`fakes`) and
the small store job that crash tests run in a subprocess (`job`). Import as ``from helpers.fakes
import ...`` (pyproject puts ``tests/`` on ``sys.path``)."""
