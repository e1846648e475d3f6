package dev.streamgate.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * StreamGateService streams LLM output from any litellm provider.
 * </pre>
 */
@io.grpc.stub.annotations.GrpcGenerated
public final class StreamGateServiceGrpc {

  private StreamGateServiceGrpc() {}

  public static final java.lang.String SERVICE_NAME = "streamgate.v1.StreamGateService";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<dev.streamgate.v1.GenerateRequest,
      dev.streamgate.v1.GenerateResponse> getGenerateMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "Generate",
      requestType = dev.streamgate.v1.GenerateRequest.class,
      responseType = dev.streamgate.v1.GenerateResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
  public static io.grpc.MethodDescriptor<dev.streamgate.v1.GenerateRequest,
      dev.streamgate.v1.GenerateResponse> getGenerateMethod() {
    io.grpc.MethodDescriptor<dev.streamgate.v1.GenerateRequest, dev.streamgate.v1.GenerateResponse> getGenerateMethod;
    if ((getGenerateMethod = StreamGateServiceGrpc.getGenerateMethod) == null) {
      synchronized (StreamGateServiceGrpc.class) {
        if ((getGenerateMethod = StreamGateServiceGrpc.getGenerateMethod) == null) {
          StreamGateServiceGrpc.getGenerateMethod = getGenerateMethod =
              io.grpc.MethodDescriptor.<dev.streamgate.v1.GenerateRequest, dev.streamgate.v1.GenerateResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "Generate"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.streamgate.v1.GenerateRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.streamgate.v1.GenerateResponse.getDefaultInstance()))
              .setSchemaDescriptor(new StreamGateServiceMethodDescriptorSupplier("Generate"))
              .build();
        }
      }
    }
    return getGenerateMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.streamgate.v1.GetMetricsRequest,
      dev.streamgate.v1.GetMetricsResponse> getGetMetricsMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "GetMetrics",
      requestType = dev.streamgate.v1.GetMetricsRequest.class,
      responseType = dev.streamgate.v1.GetMetricsResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.streamgate.v1.GetMetricsRequest,
      dev.streamgate.v1.GetMetricsResponse> getGetMetricsMethod() {
    io.grpc.MethodDescriptor<dev.streamgate.v1.GetMetricsRequest, dev.streamgate.v1.GetMetricsResponse> getGetMetricsMethod;
    if ((getGetMetricsMethod = StreamGateServiceGrpc.getGetMetricsMethod) == null) {
      synchronized (StreamGateServiceGrpc.class) {
        if ((getGetMetricsMethod = StreamGateServiceGrpc.getGetMetricsMethod) == null) {
          StreamGateServiceGrpc.getGetMetricsMethod = getGetMetricsMethod =
              io.grpc.MethodDescriptor.<dev.streamgate.v1.GetMetricsRequest, dev.streamgate.v1.GetMetricsResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "GetMetrics"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.streamgate.v1.GetMetricsRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.streamgate.v1.GetMetricsResponse.getDefaultInstance()))
              .setSchemaDescriptor(new StreamGateServiceMethodDescriptorSupplier("GetMetrics"))
              .build();
        }
      }
    }
    return getGetMetricsMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static StreamGateServiceStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<StreamGateServiceStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<StreamGateServiceStub>() {
        @java.lang.Override
        public StreamGateServiceStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new StreamGateServiceStub(channel, callOptions);
        }
      };
    return StreamGateServiceStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports all types of calls on the service
   */
  public static StreamGateServiceBlockingV2Stub newBlockingV2Stub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<StreamGateServiceBlockingV2Stub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<StreamGateServiceBlockingV2Stub>() {
        @java.lang.Override
        public StreamGateServiceBlockingV2Stub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new StreamGateServiceBlockingV2Stub(channel, callOptions);
        }
      };
    return StreamGateServiceBlockingV2Stub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static StreamGateServiceBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<StreamGateServiceBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<StreamGateServiceBlockingStub>() {
        @java.lang.Override
        public StreamGateServiceBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new StreamGateServiceBlockingStub(channel, callOptions);
        }
      };
    return StreamGateServiceBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static StreamGateServiceFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<StreamGateServiceFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<StreamGateServiceFutureStub>() {
        @java.lang.Override
        public StreamGateServiceFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new StreamGateServiceFutureStub(channel, callOptions);
        }
      };
    return StreamGateServiceFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * StreamGateService streams LLM output from any litellm provider.
   * </pre>
   */
  public interface AsyncService {

    /**
     * <pre>
     * Generate streams content chunks, then exactly one final message: a
     * Completion, or an Error carrying the partial text and usage so far.
     * Requests refused before the stream starts (bad input, over the
     * concurrency limit, draining) end with a non-OK status and no message.
     * A stream that fails after it was admitted sends its final Error message
     * and then ends with the matching non-OK status.
     * </pre>
     */
    default void generate(dev.streamgate.v1.GenerateRequest request,
        io.grpc.stub.StreamObserver<dev.streamgate.v1.GenerateResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGenerateMethod(), responseObserver);
    }

    /**
     * <pre>
     * GetMetrics returns the aggregate metrics of this server.
     * </pre>
     */
    default void getMetrics(dev.streamgate.v1.GetMetricsRequest request,
        io.grpc.stub.StreamObserver<dev.streamgate.v1.GetMetricsResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGetMetricsMethod(), responseObserver);
    }
  }

  /**
   * Base class for the server implementation of the service StreamGateService.
   * <pre>
   * StreamGateService streams LLM output from any litellm provider.
   * </pre>
   */
  public static abstract class StreamGateServiceImplBase
      implements io.grpc.BindableService, AsyncService {

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return StreamGateServiceGrpc.bindService(this);
    }
  }

  /**
   * A stub to allow clients to do asynchronous rpc calls to service StreamGateService.
   * <pre>
   * StreamGateService streams LLM output from any litellm provider.
   * </pre>
   */
  public static final class StreamGateServiceStub
      extends io.grpc.stub.AbstractAsyncStub<StreamGateServiceStub> {
    private StreamGateServiceStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected StreamGateServiceStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new StreamGateServiceStub(channel, callOptions);
    }

    /**
     * <pre>
     * Generate streams content chunks, then exactly one final message: a
     * Completion, or an Error carrying the partial text and usage so far.
     * Requests refused before the stream starts (bad input, over the
     * concurrency limit, draining) end with a non-OK status and no message.
     * A stream that fails after it was admitted sends its final Error message
     * and then ends with the matching non-OK status.
     * </pre>
     */
    public void generate(dev.streamgate.v1.GenerateRequest request,
        io.grpc.stub.StreamObserver<dev.streamgate.v1.GenerateResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncServerStreamingCall(
          getChannel().newCall(getGenerateMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * GetMetrics returns the aggregate metrics of this server.
     * </pre>
     */
    public void getMetrics(dev.streamgate.v1.GetMetricsRequest request,
        io.grpc.stub.StreamObserver<dev.streamgate.v1.GetMetricsResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getGetMetricsMethod(), getCallOptions()), request, responseObserver);
    }
  }

  /**
   * A stub to allow clients to do synchronous rpc calls to service StreamGateService.
   * <pre>
   * StreamGateService streams LLM output from any litellm provider.
   * </pre>
   */
  public static final class StreamGateServiceBlockingV2Stub
      extends io.grpc.stub.AbstractBlockingStub<StreamGateServiceBlockingV2Stub> {
    private StreamGateServiceBlockingV2Stub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected StreamGateServiceBlockingV2Stub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new StreamGateServiceBlockingV2Stub(channel, callOptions);
    }

    /**
     * <pre>
     * Generate streams content chunks, then exactly one final message: a
     * Completion, or an Error carrying the partial text and usage so far.
     * Requests refused before the stream starts (bad input, over the
     * concurrency limit, draining) end with a non-OK status and no message.
     * A stream that fails after it was admitted sends its final Error message
     * and then ends with the matching non-OK status.
     * </pre>
     */
    @io.grpc.ExperimentalApi("https://github.com/grpc/grpc-java/issues/10918")
    public io.grpc.stub.BlockingClientCall<?, dev.streamgate.v1.GenerateResponse>
        generate(dev.streamgate.v1.GenerateRequest request) {
      return io.grpc.stub.ClientCalls.blockingV2ServerStreamingCall(
          getChannel(), getGenerateMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GetMetrics returns the aggregate metrics of this server.
     * </pre>
     */
    public dev.streamgate.v1.GetMetricsResponse getMetrics(dev.streamgate.v1.GetMetricsRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getGetMetricsMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do limited synchronous rpc calls to service StreamGateService.
   * <pre>
   * StreamGateService streams LLM output from any litellm provider.
   * </pre>
   */
  public static final class StreamGateServiceBlockingStub
      extends io.grpc.stub.AbstractBlockingStub<StreamGateServiceBlockingStub> {
    private StreamGateServiceBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected StreamGateServiceBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new StreamGateServiceBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * Generate streams content chunks, then exactly one final message: a
     * Completion, or an Error carrying the partial text and usage so far.
     * Requests refused before the stream starts (bad input, over the
     * concurrency limit, draining) end with a non-OK status and no message.
     * A stream that fails after it was admitted sends its final Error message
     * and then ends with the matching non-OK status.
     * </pre>
     */
    public java.util.Iterator<dev.streamgate.v1.GenerateResponse> generate(
        dev.streamgate.v1.GenerateRequest request) {
      return io.grpc.stub.ClientCalls.blockingServerStreamingCall(
          getChannel(), getGenerateMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GetMetrics returns the aggregate metrics of this server.
     * </pre>
     */
    public dev.streamgate.v1.GetMetricsResponse getMetrics(dev.streamgate.v1.GetMetricsRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getGetMetricsMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do ListenableFuture-style rpc calls to service StreamGateService.
   * <pre>
   * StreamGateService streams LLM output from any litellm provider.
   * </pre>
   */
  public static final class StreamGateServiceFutureStub
      extends io.grpc.stub.AbstractFutureStub<StreamGateServiceFutureStub> {
    private StreamGateServiceFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected StreamGateServiceFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new StreamGateServiceFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * GetMetrics returns the aggregate metrics of this server.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.streamgate.v1.GetMetricsResponse> getMetrics(
        dev.streamgate.v1.GetMetricsRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getGetMetricsMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_GENERATE = 0;
  private static final int METHODID_GET_METRICS = 1;

  private static final class MethodHandlers<Req, Resp> implements
      io.grpc.stub.ServerCalls.UnaryMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ServerStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ClientStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.BidiStreamingMethod<Req, Resp> {
    private final AsyncService serviceImpl;
    private final int methodId;

    MethodHandlers(AsyncService serviceImpl, int methodId) {
      this.serviceImpl = serviceImpl;
      this.methodId = methodId;
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public void invoke(Req request, io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        case METHODID_GENERATE:
          serviceImpl.generate((dev.streamgate.v1.GenerateRequest) request,
              (io.grpc.stub.StreamObserver<dev.streamgate.v1.GenerateResponse>) responseObserver);
          break;
        case METHODID_GET_METRICS:
          serviceImpl.getMetrics((dev.streamgate.v1.GetMetricsRequest) request,
              (io.grpc.stub.StreamObserver<dev.streamgate.v1.GetMetricsResponse>) responseObserver);
          break;
        default:
          throw new AssertionError();
      }
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public io.grpc.stub.StreamObserver<Req> invoke(
        io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        default:
          throw new AssertionError();
      }
    }
  }

  public static final io.grpc.ServerServiceDefinition bindService(AsyncService service) {
    return io.grpc.ServerServiceDefinition.builder(getServiceDescriptor())
        .addMethod(
          getGenerateMethod(),
          io.grpc.stub.ServerCalls.asyncServerStreamingCall(
            new MethodHandlers<
              dev.streamgate.v1.GenerateRequest,
              dev.streamgate.v1.GenerateResponse>(
                service, METHODID_GENERATE)))
        .addMethod(
          getGetMetricsMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.streamgate.v1.GetMetricsRequest,
              dev.streamgate.v1.GetMetricsResponse>(
                service, METHODID_GET_METRICS)))
        .build();
  }

  private static abstract class StreamGateServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    StreamGateServiceBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return dev.streamgate.v1.StreamgateProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("StreamGateService");
    }
  }

  private static final class StreamGateServiceFileDescriptorSupplier
      extends StreamGateServiceBaseDescriptorSupplier {
    StreamGateServiceFileDescriptorSupplier() {}
  }

  private static final class StreamGateServiceMethodDescriptorSupplier
      extends StreamGateServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final java.lang.String methodName;

    StreamGateServiceMethodDescriptorSupplier(java.lang.String methodName) {
      this.methodName = methodName;
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.MethodDescriptor getMethodDescriptor() {
      return getServiceDescriptor().findMethodByName(methodName);
    }
  }

  private static volatile io.grpc.ServiceDescriptor serviceDescriptor;

  public static io.grpc.ServiceDescriptor getServiceDescriptor() {
    io.grpc.ServiceDescriptor result = serviceDescriptor;
    if (result == null) {
      synchronized (StreamGateServiceGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new StreamGateServiceFileDescriptorSupplier())
              .addMethod(getGenerateMethod())
              .addMethod(getGetMetricsMethod())
              .build();
        }
      }
    }
    return result;
  }
}
