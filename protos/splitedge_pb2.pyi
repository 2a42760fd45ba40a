from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("codec", "shape", "scale", "zero_point", "data")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    codec: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    scale: float
    zero_point: float
    data: bytes
    def __init__(self, codec: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., scale: _Optional[float] = ..., zero_point: _Optional[float] = ..., data: _Optional[bytes] = ...) -> None: ...

class Size(_message.Message):
    __slots__ = ("height", "width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("model", "split_point", "tensor", "original_size", "split_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINT_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    split_point: str
    tensor: Tensor
    original_size: Size
    split_size: Size
    def __init__(self, model: _Optional[str] = ..., split_point: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., original_size: _Optional[_Union[Size, _Mapping]] = ..., split_size: _Optional[_Union[Size, _Mapping]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame_id", "payload", "probe")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    payload: Payload
    probe: bytes
    def __init__(self, frame_id: _Optional[int] = ..., payload: _Optional[_Union[Payload, _Mapping]] = ..., probe: _Optional[bytes] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2", "label", "score")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    label: int
    score: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ..., label: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("frame_id", "code", "error", "detections", "server_ms", "queue_ms")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    SERVER_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    code: int
    error: str
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    server_ms: float
    queue_ms: float
    def __init__(self, frame_id: _Optional[int] = ..., code: _Optional[int] = ..., error: _Optional[str] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., server_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "family", "architecture", "split_point", "codec", "bottleneck_channels", "weights", "latency_ms", "bottleneck_digest")
    class LatencyMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINT_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    architecture: str
    split_point: str
    codec: str
    bottleneck_channels: int
    weights: str
    latency_ms: _containers.ScalarMap[str, float]
    bottleneck_digest: str
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., architecture: _Optional[str] = ..., split_point: _Optional[str] = ..., codec: _Optional[str] = ..., bottleneck_channels: _Optional[int] = ..., weights: _Optional[str] = ..., latency_ms: _Optional[_Mapping[str, float]] = ..., bottleneck_digest: _Optional[str] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("models", "max_message_bytes", "version")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    max_message_bytes: int
    version: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., max_message_bytes: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...
