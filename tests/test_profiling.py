"""kdkeras.profiling: FLOPs and parameters against hand-computed counts."""

import keras

from kdkeras.profiling import count_flops, count_params


def test_flops_of_each_layer_kind_by_hand():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8·8 · 3·3·3·4 = 6912 MACs
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 4·4 · 3·3·4 = 576
    x = keras.layers.SeparableConv2D(5, 3, padding="same")(x)  # 4·4 · (3·3·4 + 4·5) = 896
    x = keras.layers.BatchNormalization()(x)  # not counted
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2)(x)  # 5·2 = 10
    model = keras.Model(inputs, outputs)
    assert count_flops(model) == 2 * (6912 + 576 + 896 + 10)


def test_flops_of_a_nested_model_and_params():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(3)(inner_in))  # 12 MACs, 15 params
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inner(inputs)))  # + 3 MACs, 4 params
    assert count_flops(model) == 2 * 15
    assert count_params(model) == 19
