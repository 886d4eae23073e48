"""Local model processes, apart from the adapters that talk to them: process supervision
(managed.py, supervisor.py), the embedded llama.cpp server (llama.py launches embedded_server.py),
its model file (model_files.py), and GPU placement of local lanes (gpus.py). Imports engine.core only.
"""
