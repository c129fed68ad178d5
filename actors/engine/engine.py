"""The engine loop: drain inbox -> schedule -> run model -> sample -> publish.

Public API (the replica and the CLI code against exactly this):

    engine = LLMEngine(EngineConfig(...))            # or LLMEngine.from_model("path", dtype=...)
    engine.tokenizer                                 # actors.engine.tokenizer.Tokenizer
    engine.add_request(request_id, prompt, params, priority=0)   # prompt: str | list[int];
                                                     # raises ValueError naming the field
    engine.abort_request(request_id)                 # idempotent; unknown ids are ignored
    outputs = engine.step()                          # list[RequestOutput] deltas
    engine.has_unfinished_requests() -> bool
    engine.generate(prompts, params) -> list[CompletionResult]   # synchronous
    engine.stats() -> EngineStats                    # running, waiting, kv blocks free/total...
"""
