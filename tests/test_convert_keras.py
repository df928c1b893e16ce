"""Keras / Larq import (pybnn.convert.keras): model files that the tests write themselves in the
layouts Keras writes -- Keras 2 / tf.keras `.h5` (what larq users save) and Keras 3 `.keras` --
converted and compared with a NumPy computation of Larq's and Keras' semantics (float64)."""
import io
import json
import zipfile

import h5py
import numpy as np
import pytest

import pybnn
from pybnn import layers as L
from pybnn.convert import convert, from_keras

# ---------------------------------------------------------------------------- Larq semantics in NumPy


def larq_sign(x):
    """larq.math.sign(x) = tf.sign(tf.sign(x) + 0.1): +1 where x >= 0 (zero included), else -1;
    what ste_sign, approx_sign and swish_sign compute in the forward pass."""
    return np.where(x >= 0, 1.0, -1.0)


def same_pads(size, k, s):
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv2d(x, k, strides=(1, 1), padding="valid", pad_value=0.0, depthwise=False):
    """NHWC convolution in float64: TensorFlow's "same" padding with the border holding
    pad_value (larq pads the quantized input with pad_values); depthwise kernels (KH, KW, C, M)."""
    kh, kw = k.shape[:2]
    pads = [same_pads(x.shape[1 + a], k.shape[a], strides[a]) if padding == "same" else (0, 0) for a in range(2)]
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
    ho, wo = ((xp.shape[1 + a] - k.shape[a]) // strides[a] + 1 for a in range(2))
    out = np.zeros((x.shape[0], ho, wo, k.shape[2] * k.shape[3] if depthwise else k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + (ho - 1) * strides[0] + 1:strides[0], j:j + (wo - 1) * strides[1] + 1:strides[1]]
            if depthwise:
                out += (patch[..., :, None] * k[i, j]).reshape(out.shape)
            else:
                out += patch @ k[i, j]
    return out


def batch_norm(x, w, eps=1e-3):
    """tf.nn.batch_normalization: x * inv + (beta - mean * inv), inv = gamma / sqrt(var + eps)."""
    gamma, beta, mean, var = w
    inv = gamma / np.sqrt(var + eps)
    return x * inv + (beta - mean * inv)


def max_pool(x, k, padding="valid"):
    pads = [same_pads(x.shape[1 + a], k, k) if padding == "same" else (0, 0) for a in range(2)]
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    n, h, w, c = xp.shape
    return xp[:, :h // k * k, :w // k * k].reshape(n, h // k, k, w // k, k, c).max(axis=(2, 4))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------- writing Keras files


def quantizer(cls, **config):
    """A larq quantizer as tf.keras serializes it inside a layer config."""
    return {"class_name": cls, "config": {"name": cls.lower(), "trainable": True, "dtype": "float32", **config}}


def k2(cls, name, inbound=(), **config):
    """A layer entry of a Keras 2 functional model config."""
    entry = {"class_name": cls, "name": name,
             "config": {"name": name, "trainable": True, "dtype": "float32", **config},
             "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]] if inbound else []}
    return entry


def write_keras2_h5(path, model_config, weights):
    """What tf.keras `model.save("m.h5")` writes: the model_config attribute and
    model_weights/<layer>/<layer>/<weight>:0 datasets listed by layer_names / weight_names."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.13.1"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
        group = f.create_group("model_weights")
        names = [e["config"]["name"] for e in model_config["config"]["layers"]]
        group.attrs["layer_names"] = [n.encode("utf8") for n in names]
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.13.1"
        for name in names:
            g = group.create_group(name)
            items = weights.get(name, [])
            g.attrs["weight_names"] = [f"{name}/{w}:0".encode("utf8") for w, _ in items]
            for w, array in items:
                g.create_dataset(f"{name}/{w}:0", data=array)


def bn_weights(rng, c, scale=True, center=True):
    items = []
    if scale:
        items.append(("gamma", rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)))
    if center:
        items.append(("beta", rng.normal(0, 0.5, c)))
    items += [("moving_mean", rng.normal(0, 2, c)), ("moving_variance", rng.uniform(0.5, 2, c))]
    return [(n, a.astype(np.float32)) for n, a in items]


def as_bn(items, c):
    d = dict(items)
    return [d.get("gamma", np.ones(c)), d.get("beta", np.zeros(c)), d["moving_mean"], d["moving_variance"]]


# ---------------------------------------------------------------------------- a QuickNet-like functional model


def quicknet_like(tmp_path):
    rng = np.random.default_rng(0)
    ste, approx, swish = quantizer("SteSign", clip_value=1.0), quantizer("ApproxSign"), quantizer("SwishSign", beta=5.0)
    conv = dict(kernel_size=[3, 3], strides=[1, 1], padding="same", data_format="channels_last",
                dilation_rate=[1, 1], groups=1, activation="linear", kernel_constraint={"class_name": "WeightClip",
                                                                                       "config": {"clip_value": 1}})
    layers = [
        k2("InputLayer", "input_1", batch_input_shape=[None, 10, 10, 3], sparse=False, ragged=False),
        k2("QuantConv2D", "stem", ["input_1"], filters=24, use_bias=False, input_quantizer=None, kernel_quantizer=ste,
           pad_values=0.0, **conv),
        k2("BatchNormalization", "stem_bn", ["stem"], axis=[3], momentum=0.99, epsilon=1e-3, center=True,
           scale=False),
        k2("QuantConv2D", "b1", ["stem_bn"], filters=24, use_bias=False, input_quantizer=ste,
           kernel_quantizer=approx, pad_values=1.0, **conv),
        k2("BatchNormalization", "b1_bn", ["b1"], axis=-1, epsilon=1e-3, center=True, scale=True),
        k2("Add", "b1_add", ["stem_bn", "b1_bn"]),
        k2("QuantConv2D", "down", ["b1_add"], filters=40, use_bias=True, input_quantizer=swish,
           kernel_quantizer=quantizer("MagnitudeAwareSign", clip_value=1.0), pad_values=0.0,
           **dict(conv, strides=[2, 2])),
        k2("BatchNormalization", "down_bn", ["down"], axis=-1, epsilon=1e-3, center=True, scale=True),
        k2("MaxPooling2D", "pool", ["down_bn"], pool_size=[2, 2], strides=[2, 2], padding="same",
           data_format="channels_last"),
        k2("QuantDepthwiseConv2D", "dw", ["pool"], kernel_size=[3, 3], strides=[1, 1], padding="same",
           depth_multiplier=1, data_format="channels_last", dilation_rate=[1, 1], activation="linear", use_bias=False,
           input_quantizer=ste, depthwise_quantizer=ste, pad_values=0.0),
        k2("BatchNormalization", "dw_bn", ["dw"], axis=-1, epsilon=1e-3, center=True, scale=True),
        k2("PReLU", "prelu", ["dw_bn"], shared_axes=[1, 2]),
        k2("GlobalAveragePooling2D", "gap", ["prelu"], data_format="channels_last", keepdims=False),
        k2("Dropout", "drop", ["gap"], rate=0.2),
        k2("QuantDense", "fc", ["drop"], units=10, activation="linear", use_bias=False, input_quantizer=ste,
           kernel_quantizer=ste),
        k2("BatchNormalization", "fc_bn", ["fc"], axis=-1, epsilon=1e-3, center=True, scale=True),
        k2("Activation", "softmax", ["fc_bn"], activation="softmax"),
    ]
    config = {"class_name": "Functional", "config": {"name": "quicknet_like", "layers": layers,
                                                     "input_layers": [["input_1", 0, 0]],
                                                     "output_layers": [["softmax", 0, 0]]}}
    w = {"stem": [("kernel", rng.normal(0, 1, (3, 3, 3, 24)))], "stem_bn": bn_weights(rng, 24, scale=False),
         "b1": [("kernel", rng.normal(0, 1, (3, 3, 24, 24)))], "b1_bn": bn_weights(rng, 24),
         "down": [("kernel", rng.normal(0, 1, (3, 3, 24, 40))), ("bias", rng.normal(0, 1, 40))],
         "down_bn": bn_weights(rng, 40), "dw": [("depthwise_kernel", rng.normal(0, 1, (3, 3, 40, 1)))],
         "dw_bn": bn_weights(rng, 40), "prelu": [("alpha", rng.uniform(0, 0.5, (1, 1, 40)))],
         "fc": [("kernel", rng.normal(0, 1, (40, 10)))], "fc_bn": bn_weights(rng, 10)}
    w = {k: [(n, np.asarray(a, np.float32)) for n, a in v] for k, v in w.items()}
    path = tmp_path / "quicknet_like.h5"
    write_keras2_h5(path, config, w)
    return path, {k: dict(v) for k, v in w.items()}


def quicknet_numpy(x, w):
    """The model above as Larq computes it at inference."""
    def bn(y, name, c):
        return batch_norm(y, as_bn(w[name].items(), c))

    stem = bn(conv2d(x, larq_sign(w["stem"]["kernel"]), padding="same"), "stem_bn", 24)
    b1 = bn(conv2d(larq_sign(stem), larq_sign(w["b1"]["kernel"]), padding="same", pad_value=1.0), "b1_bn", 24)
    y = stem + b1
    k = w["down"]["kernel"]
    k = larq_sign(k) * np.abs(k).mean(axis=(0, 1, 2))   # MagnitudeAwareSign
    y = bn(conv2d(larq_sign(y), k, strides=(2, 2), padding="same") + w["down"]["bias"], "down_bn", 40)
    y = max_pool(y, 2, "same")
    y = bn(conv2d(larq_sign(y), larq_sign(w["dw"]["depthwise_kernel"]), padding="same", depthwise=True), "dw_bn", 40)
    y = np.where(y >= 0, y, y * w["prelu"]["alpha"].reshape(-1))
    y = y.mean(axis=(1, 2))
    y = bn(larq_sign(y) @ larq_sign(w["fc"]["kernel"]), "fc_bn", 10)
    return softmax(y)


def test_larq_functional_h5_matches_numpy(isa, tmp_path):
    path, w = quicknet_like(tmp_path)
    model = convert(path)
    kinds = {l.name: type(l).__name__ for l in model.layers}
    assert kinds["stem"] == "FloatBinaryConv2D" and kinds["b1"] == kinds["down"] == kinds["dw"] == "BinaryConv2D"
    assert kinds["fc"] == "BinaryDense"
    assert model.get_layer("b1").pad_value == 1 and model.get_layer("down").pad_value == 0
    assert model.get_layer("down").use_scale and not model.get_layer("b1").use_scale
    assert model.get_layer("dw").groups == 40
    x = np.random.default_rng(1).standard_normal((4, 10, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), quicknet_numpy(x.astype(np.float64), w), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- a BinaryNet-like Sequential model


def binarynet_like(tmp_path, last_activation="ste_sign"):
    """larq's documentation example style: Sequential without an InputLayer (the first layer
    carries batch_input_shape), ZeroPadding2D before a binary convolution, binary output."""
    rng = np.random.default_rng(2)
    ste = quantizer("SteSign", clip_value=1.0)
    kw = dict(input_quantizer=ste, kernel_quantizer=ste, kernel_constraint="weight_clip", use_bias=False,
              strides=[1, 1], data_format="channels_last", dilation_rate=[1, 1], activation="linear")
    layers = [
        {"class_name": "QuantConv2D", "config": dict(kw, name="c1", filters=16, kernel_size=[3, 3], padding="valid",
                                                     input_quantizer=None, batch_input_shape=[None, 9, 9, 1])},
        {"class_name": "BatchNormalization", "config": {"name": "bn1", "momentum": 0.999, "scale": False,
                                                        "epsilon": 1e-3}},
        {"class_name": "QuantConv2D", "config": dict(kw, name="c2", filters=33, kernel_size=[3, 3], padding="same")},
        {"class_name": "MaxPooling2D", "config": {"name": "p2", "pool_size": [2, 2], "strides": [2, 2],
                                                  "padding": "valid"}},
        {"class_name": "BatchNormalization", "config": {"name": "bn2", "momentum": 0.999, "scale": False,
                                                        "epsilon": 1e-3}},
        {"class_name": "ZeroPadding2D", "config": {"name": "zp", "padding": [[1, 1], [1, 1]]}},
        {"class_name": "QuantConv2D", "config": dict(kw, name="c3", filters=20, kernel_size=[3, 3], padding="valid")},
        {"class_name": "BatchNormalization", "config": {"name": "bn3", "scale": False, "epsilon": 1e-3}},
        {"class_name": "Flatten", "config": {"name": "flat", "data_format": "channels_last"}},
        {"class_name": "QuantDense", "config": dict(name="d4", units=12, input_quantizer=ste, kernel_quantizer=ste,
                                                    use_bias=False, activation="linear")},
        {"class_name": "BatchNormalization", "config": {"name": "bn4", "scale": False, "epsilon": 1e-3}},
        {"class_name": "Activation", "config": {"name": "out", "activation": last_activation}},
    ]
    config = {"class_name": "Sequential", "config": {"name": "binarynet_like", "layers": layers}}
    w = {"c1": [("kernel", rng.normal(0, 1, (3, 3, 1, 16)))], "bn1": bn_weights(rng, 16, scale=False),
         "c2": [("kernel", rng.normal(0, 1, (3, 3, 16, 33)))], "bn2": bn_weights(rng, 33, scale=False),
         "c3": [("kernel", rng.normal(0, 1, (3, 3, 33, 20)))], "bn3": bn_weights(rng, 20, scale=False),
         "d4": [("kernel", rng.normal(0, 1, (3 * 3 * 20, 12)))], "bn4": bn_weights(rng, 12, scale=False)}
    w = {k: [(n, np.asarray(a, np.float32)) for n, a in v] for k, v in w.items()}
    path = tmp_path / "binarynet_like.h5"
    write_keras2_h5(path, config, w)
    return path, {k: dict(v) for k, v in w.items()}


def binarynet_numpy(x, w):
    def bn(y, name):
        return batch_norm(y, as_bn(w[name].items(), y.shape[-1]))

    y = bn(conv2d(x, larq_sign(w["c1"]["kernel"])), "bn1")
    y = bn(max_pool(conv2d(larq_sign(y), larq_sign(w["c2"]["kernel"]), padding="same"), 2), "bn2")
    y = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))           # ZeroPadding2D: zeros ...
    y = bn(conv2d(larq_sign(y), larq_sign(w["c3"]["kernel"])), "bn3")  # ... that the quantizer makes +1
    y = bn(larq_sign(y.reshape(len(y), -1)) @ larq_sign(w["d4"]["kernel"]), "bn4")
    return larq_sign(y)


def test_larq_sequential_h5_is_bit_exact(isa, tmp_path):
    path, w = binarynet_like(tmp_path)
    model = convert(path)
    assert model.get_layer("c3").pad_value == 1 and model.get_layer("c3").padding == ((1, 1), (1, 1))
    assert model.get_layer("c1").__class__ is L.FloatBinaryConv2D
    x = np.random.default_rng(3).standard_normal((5, 9, 9, 1)).astype(np.float32)
    x[:, ::3, ::2] = 0.0  # larq's sign(0) = +1, pybnn's too
    np.testing.assert_array_equal(model.predict(x), binarynet_numpy(x.astype(np.float64), w))
    # every BatchNorm folded into thresholds: the plan is binary from the first layer on
    assert not any(isinstance(op, L.BatchNormalization) for op in model.plan())
    model.save(tmp_path / "b.bin")
    np.testing.assert_array_equal(pybnn.load_model(tmp_path / "b.bin").predict(x), model.predict(x))


# ---------------------------------------------------------------------------- Keras 3 .keras archives


def k3_tensor(name, shape):
    return {"class_name": "__keras_tensor__", "config": {"shape": shape, "dtype": "float32",
                                                         "keras_history": [name, 0, 0]}}


def k3(cls, name, inbound, module="keras.layers", **config):
    args = [k3_tensor(n, None) for n in inbound]
    return {"module": module, "class_name": cls, "registered_name": None if module == "keras.layers" else
            f"larq>{cls}", "name": name, "config": {"name": name, "trainable": True, "dtype": {
                "module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}}, **config},
            "inbound_nodes": [{"args": args if len(args) == 1 else [args], "kwargs": {}}] if inbound else []}


def test_keras3_archive_matches_numpy(isa, tmp_path):
    """A Keras 3 `.keras` zip: config.json and model.weights.h5 with the variables of each layer at
    layers/<class in snake_case>[_k]/vars/<i>."""
    rng = np.random.default_rng(4)
    ste = quantizer("SteSign", clip_value=1.0)
    layers = [
        k3("InputLayer", "image", [], batch_shape=[None, 8, 7, 3], sparse=False),
        k3("Rescaling", "rescale", ["image"], scale=0.5, offset=-0.25),
        k3("Conv2D", "c1", ["rescale"], filters=12, kernel_size=[3, 3], strides=[1, 1], padding="same",
           activation="relu", use_bias=True, data_format="channels_last", dilation_rate=[1, 1], groups=1),
        k3("BatchNormalization", "bn1", ["c1"], axis=-1, epsilon=1e-3, center=True, scale=True),
        k3("QuantConv2D", "q1", ["bn1"], module="larq.layers", filters=20, kernel_size=[3, 3], strides=[2, 2],
           padding="same", pad_values=1.0, input_quantizer=ste, kernel_quantizer=ste, use_bias=False,
           activation="linear"),
        k3("QuantConv2D", "q2", ["bn1"], module="larq.layers", filters=13, kernel_size=[1, 1], strides=[2, 2],
           padding="valid", input_quantizer=ste, kernel_quantizer=ste, use_bias=False, activation="linear"),
        k3("Concatenate", "cat", ["q1", "q2"], axis=-1),
        k3("DepthwiseConv2D", "dw", ["cat"], kernel_size=[3, 3], strides=[1, 1], padding="valid",
           depth_multiplier=2, use_bias=True, activation="linear", data_format="channels_last"),
        k3("GlobalMaxPooling2D", "gmp", ["dw"], keepdims=False),
        k3("Dense", "fc", ["gmp"], units=5, activation="softmax", use_bias=True),
    ]
    config = {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
              "config": {"name": "k3", "trainable": True, "layers": layers, "input_layers": [["image", 0, 0]],
                         "output_layers": [["fc", 0, 0]]}}
    w = {"layers/conv2d": [rng.normal(0, 1, (3, 3, 3, 12)), rng.normal(0, 1, 12)],
         "layers/batch_normalization": [a for _, a in bn_weights(rng, 12)],
         "layers/quant_conv2d": [rng.normal(0, 1, (3, 3, 12, 20))],
         "layers/quant_conv2d_1": [rng.normal(0, 1, (1, 1, 12, 13))],
         "layers/depthwise_conv2d": [rng.normal(0, 1, (3, 3, 33, 2)), rng.normal(0, 1, 66)],
         "layers/dense": [rng.normal(0, 1, (66, 5)), rng.normal(0, 1, 5)]}
    w = {k: [np.asarray(a, np.float32) for a in v] for k, v in w.items()}
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_group("vars")
        for path, arrays in w.items():
            g = f.create_group(path).create_group("vars")
            for i, a in enumerate(arrays):
                g[str(i)] = a
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.3.3", "date_saved": "2024-05-01@10:00:00"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", buf.getvalue())
    model = convert(tmp_path / "m.keras")
    assert type(model.get_layer("q1")) is L.BinaryConv2D and model.get_layer("q1").pad_value == 1
    x = np.random.default_rng(5).standard_normal((3, 8, 7, 3))
    y = x * 0.5 - 0.25
    y = np.maximum(conv2d(y, w["layers/conv2d"][0], padding="same") + w["layers/conv2d"][1], 0)
    y = batch_norm(y, w["layers/batch_normalization"])
    q1 = conv2d(larq_sign(y), larq_sign(w["layers/quant_conv2d"][0]), (2, 2), "same", pad_value=1.0)
    q2 = conv2d(larq_sign(y), larq_sign(w["layers/quant_conv2d_1"][0]), (2, 2))
    y = np.concatenate([q1, q2], axis=-1)
    y = conv2d(y, w["layers/depthwise_conv2d"][0], depthwise=True) + w["layers/depthwise_conv2d"][1]
    y = softmax(y.max(axis=(1, 2)) @ w["layers/dense"][0] + w["layers/dense"][1])
    np.testing.assert_allclose(model.predict(x.astype(np.float32)), y, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- errors


def tiny_h5(tmp_path, layer, weights=(), shape=(6, 6, 3)):
    layers = [k2("InputLayer", "in", batch_input_shape=[None, *shape]), dict(layer, inbound_nodes=[[["in", 0, 0, {}]]])]
    config = {"class_name": "Functional", "config": {"name": "t", "layers": layers, "input_layers": [["in", 0, 0]],
                                                     "output_layers": [[layer["name"], 0, 0]]}}
    write_keras2_h5(tmp_path / "t.h5", config, {layer["name"]: list(weights)})
    return tmp_path / "t.h5"


KERNEL = [("kernel", np.ones((3, 3, 3, 4), np.float32))]


@pytest.mark.parametrize("layer, weights, match", [
    (k2("Conv2DTranspose", "up", filters=4, kernel_size=[3, 3]), KERNEL,
     r"layer 'up' \(Conv2DTranspose\): this layer is not supported"),
    (k2("QuantConv2D", "q", filters=4, kernel_size=[3, 3], input_quantizer=quantizer("SteTern"),
        kernel_quantizer=None), KERNEL, r"layer 'q' \(QuantConv2D\): input_quantizer 'SteTern' is not supported"),
    (k2("QuantConv2D", "q", filters=4, kernel_size=[3, 3], padding="same", pad_values=0.5,
        input_quantizer="ste_sign", kernel_quantizer="ste_sign"), KERNEL, r"pad_values=0.5"),
    (k2("QuantConv2D", "q", filters=4, kernel_size=[3, 3], padding="same", pad_values=1.0,
        input_quantizer=None, kernel_quantizer="ste_sign"), KERNEL, r"pads a float input with 1.0"),
    (k2("Conv2D", "c", filters=4, kernel_size=[3, 3], data_format="channels_first"), KERNEL, "channels_first"),
    (k2("Conv2D", "c", filters=4, kernel_size=[3, 3]), [], r"layer 'c' \(Conv2D\): weight 'kernel' is missing"),
    (k2("Activation", "a", activation="tanh"), [], r"layer 'a' \(Activation\): activation 'tanh'"),
])
def test_unsupported_layers_name_layer_class_and_reason(tmp_path, layer, weights, match):
    with pytest.raises(pybnn.ConvertError, match=match):
        from_keras(tiny_h5(tmp_path, layer, weights))


def test_weights_only_and_broken_files(tmp_path):
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.attrs["layer_names"] = [b"dense"]
    with pytest.raises(pybnn.ConvertError, match="no model_config attribute"):
        convert(tmp_path / "w.h5")
    (tmp_path / "x.keras").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(pybnn.ConvertError, match="x.keras.*neither an HDF5 file nor a zip archive"):
        convert(tmp_path / "x.keras")


def test_command_line_converts_keras_and_refuses_check(tmp_path, capsys):
    from pybnn.__main__ import main
    path, _ = binarynet_like(tmp_path)
    assert main(["convert", str(path), "-o", str(tmp_path / "b.bin")]) == 0
    assert "input 'input': float32 [9, 9, 1] per sample, NHWC" in capsys.readouterr().out
    assert main(["convert", str(path), "-o", str(tmp_path / "b.bin"), "--check"]) == 1
    assert "--check runs the source model with onnxruntime" in capsys.readouterr().err
