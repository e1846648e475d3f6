package dev.streamgate.client;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;

/**
 * A stream that did not complete: refused before it started (no final message), or failed after it
 * started (with the server's final {@link dev.streamgate.v1.Error} message: partial text, usage).
 */
public final class StreamGateException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final transient Status status;
  private final transient dev.streamgate.v1.Error error;

  StreamGateException(StatusRuntimeException cause, dev.streamgate.v1.Error error) {
    super(message(cause.getStatus(), error), cause);
    this.status = cause.getStatus();
    this.error = error;
  }

  private static String message(Status status, dev.streamgate.v1.Error error) {
    String text = error != null && !error.getMessage().isEmpty() ? error.getMessage() : status.getDescription();
    return status.getCode() + (text == null ? "" : ": " + text);
  }

  /** The status the call ended with. */
  public Status status() {
    return status;
  }

  /** The status code the call ended with. */
  public Status.Code code() {
    return status.getCode();
  }

  /** The server's final Error message, or null when the stream was refused before it started. */
  public dev.streamgate.v1.Error error() {
    return error;
  }

  /** Whether the same request may succeed if sent again (the server's word, else by status code). */
  public boolean retryable() {
    if (error != null) {
      return error.getRetryable();
    }
    Status.Code code = status.getCode();
    return code == Status.Code.UNAVAILABLE || code == Status.Code.RESOURCE_EXHAUSTED;
  }
}
