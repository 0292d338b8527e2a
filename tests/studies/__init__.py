"""Tests of the studies part of the project."""
