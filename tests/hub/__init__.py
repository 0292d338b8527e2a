"""Tests of the hub part of the project."""
