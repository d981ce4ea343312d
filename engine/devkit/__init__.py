"""Tooling for the demo, the tests and jobs/benchmark.py: the synthetic demo set (demo_data, demo_media, demo_content,
demo_containers: espeak-ng speech, a drawn face, ffmpeg), tiny Qwen models built on the fly (tiny_models,
tiny_corpus, tiny_vl), a scripted OpenAI-compatible loopback server (fake_openai: the tests' API and the models
benchmark's) and the benchmarks of jobs/benchmark.py (benchmarking, neardup_benchmark, benchmark_models). May import any
engine package. Production code does not import it, except to build a `tiny:DIR` model path on demand
(engine.models.backends.local, train.core.modeling), which is how the demo and tests run real loading code without a
model hub.
"""
