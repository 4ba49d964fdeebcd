"""Helpers shared by the test suite (throwaway servers, ...)."""
