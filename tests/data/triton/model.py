"""Triton python-backend model that runs a bundle's model.onnx with onnxruntime.

The tritonserver in the nvidia-pytriton wheel has only the python backend; the tests swap the bundle's
`platform: "onnxruntime_onnx"` line for `backend: "python"` and put this file beside model.onnx. All
requests the dynamic batcher hands over at once run as one onnxruntime batch, as the ONNX Runtime
backend would run them.
"""
import json
import pathlib

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.batched = config["max_batch_size"] > 0
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        path = pathlib.Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        if self.batched:  # one run for everything the dynamic batcher grouped, then split per request
            outputs = self.session.run(self.output_names, {self.input_name: np.concatenate(inputs)})
            bounds = np.cumsum([0] + [len(x) for x in inputs])
            per_request = [[np.ascontiguousarray(o[a:b]) for o in outputs] for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            per_request = [self.session.run(self.output_names, {self.input_name: x}) for x in inputs]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.output_names, values)])
                for values in per_request]
