# The dualwrite binary, for the `dualwrite` service of docker-compose.yml.
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin dualwrite

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/dualwrite /usr/local/bin/dualwrite
ENTRYPOINT ["dualwrite"]
