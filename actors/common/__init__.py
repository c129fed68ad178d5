"""Torch-free types and clients both sides share: the orchestrator (ingress, controller, admin
API, CLI) and the replicas. Sampling parameters, engine and replica configuration, the token
plane's types and wire conversions, typed commands and errors, the tokenizer, TLS helpers, and the
clients of a replica's two gRPC services. An import-linter contract keeps torch and the engine
out."""
