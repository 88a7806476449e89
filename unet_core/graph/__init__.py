"""The stub graph executor: ComfyUI workflow formats, validation and execution.

- ``schemas``: node schemas from our classes and from the recorded core ``/object_info`` (``data/``);
- ``formats``: API prompt / UI workflow recognition, UI -> API conversion (the frontend's graphToPrompt);
- ``validate``: ComfyUI's ``validate_prompt`` rules, error types and report;
- ``calls``: ComfyUI's input gathering and list mapping for node functions;
- ``execute``: ``Executor(node_classes, core_schemas)``: validate, run what outputs need, cache by inputs.
"""
