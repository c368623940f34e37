#!/usr/bin/env bash
# Builds the wireseal image on a machine that reaches no container registry,
# from Debian packages and binaries built on this machine:
#
#   cargo build --release --locked -p wireseal -p wireseal-tunnel --bins
#   deploy/image/build-offline.sh                      # --bin-dir target/release
#
# The Containerfile (what users with registry access build) pulls rust and
# debian images. This script builds the same runtime image without them:
#
#   1. The base: the Debian release the Containerfile's runtime stage names
#      (debian:<release>-slim), made with mmdebstrap from the Debian mirror
#      (variant minbase, docs and man pages left out as in Debian's -slim
#      images), with the packages of the Containerfile's `apt-get install`
#      step, and the CA bundle without the ca-certificates package (as the
#      Containerfile copies it from its builder). Cached as a tarball in the
#      cache directory and imported into the container engine; made again only
#      when the recipe changes or with --refresh-base.
#   2. The image: a Containerfile generated from the Containerfile's runtime
#      stage, instruction by instruction: the base instead of debian:*-slim,
#      no `apt-get` step (the packages are in the base), the binaries from
#      --bin-dir instead of the builder stage's (both installed by
#      install-binaries.sh). Labels, environment, user, entry point and
#      command are copied as they are, so the two images cannot drift; an
#      instruction this script does not know how to carry over (another
#      `--from=`, another apt-get) stops the build.
#
# Options:
#   --bin-dir DIR    where wireseal and wireseal-tunnel are (default target/release;
#                    CI passes target/debug, see deploy/README.md)
#   --tag TAG        image name (default ghcr.io/wireseal/wireseal:<workspace version>)
#   --cache DIR      base tarballs and build stamps (default $WIRESEAL_IMAGE_CACHE,
#                    else /var/cache/wireseal/image)
#   --mirror URL     Debian mirror (default $WIRESEAL_DEBIAN_MIRROR, else
#                    http://deb.debian.org/debian)
#   --refresh-base   make the base again (security updates)
#   --print          print the generated Containerfile and the base recipe; build nothing
#
# Needs: bash, awk, sha256sum, flock, objcopy (binutils), mmdebstrap (only to
# make the base) and docker or podman ($CONTAINER_ENGINE to choose). Making the
# base needs root.
set -euo pipefail

me=build-offline.sh
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
containerfile=$repo/Containerfile
bin_dir=$repo/target/release
tag=
cache=${WIRESEAL_IMAGE_CACHE:-/var/cache/wireseal/image}
mirror=${WIRESEAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
refresh_base=false
print_only=false

die() {
    echo "$me: $*" >&2
    exit 1
}

while (($#)); do
    case "$1" in
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
        --tag) tag=${2:?--tag needs a name}; shift 2 ;;
        --cache) cache=${2:?--cache needs a directory}; shift 2 ;;
        --mirror) mirror=${2:?--mirror needs a URL}; shift 2 ;;
        --refresh-base) refresh_base=true; shift ;;
        --print) print_only=true; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

if [[ -z $tag ]]; then
    version=$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^version *=/ { print $2; exit }' "$repo/Cargo.toml")
    [[ -n $version ]] || die "no [workspace.package] version in Cargo.toml"
    tag=ghcr.io/wireseal/wireseal:$version
fi

# The PATH Debian's images set in their configuration (`docker import` sets
# none, and the DaemonSet's tunnel container names its command without a path).
debian_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Reads the Containerfile's last stage. Prints the Debian release and the
# packages, and writes the offline Containerfile (with BASE_REF standing for
# the base image) to the file named by `out`.
read_containerfile() {
    awk -v out="$1" '
        function fail(msg) { print "Containerfile: " msg > "/dev/stderr"; failed = 1; exit 1 }
        # One instruction = its physical lines up to one without a trailing backslash.
        {
            line = $0
            # Comments and blank lines, also between continued lines, as the builder reads them.
            if (line ~ /^[ \t]*#/ || line ~ /^[ \t]*$/) next
            text = text line "\n"
            logical = logical " " line
            if (line ~ /\\[ \t]*$/) { pending = 1; sub(/\\[ \t]*$/, "", logical); next }
            pending = 0
            instruction[++n] = text
            joined[n] = logical
            text = ""; logical = ""
        }
        END {
            if (failed) exit 1
            for (i = 1; i <= n; i++) if (joined[i] ~ /^ *FROM /) last_from = i
            if (!last_from) fail("no FROM")
            from = joined[last_from]
            if (!match(from, /debian:[a-z]+-slim/)) fail("the runtime stage is not FROM ...debian:<release>-slim: " from)
            release = substr(from, RSTART + 7, RLENGTH - 12)
            print "# Generated by deploy/image/build-offline.sh from the runtime stage of" > out
            print "# the Containerfile: edit that, not this." > out
            for (i = last_from; i <= n; i++) {
                j = joined[i]
                if (i == last_from) { print "FROM BASE_REF" > out; continue }
                if (j ~ /apt-get/) {
                    if (packages != "") fail("more than one apt-get step")
                    if (!match(j, /apt-get install -y --no-install-recommends [a-z0-9.+ -]+&&/)) fail("unexpected apt-get step: " j)
                    packages = substr(j, RSTART + 43, RLENGTH - 45)
                    gsub(/^ +| +$/, "", packages)
                    gsub(/ +/, " ", packages)
                    if (j !~ /^ *RUN apt-get update +&& apt-get install [^&]*&& rm -rf \/var\/lib\/apt\/lists\/\* *$/)
                        fail("the apt-get step does more than install packages: " j)
                    print "# (packages " packages ": installed in the base)" > out
                    continue
                }
                if (j ~ /--from=/) {
                    if (j ~ /^ *COPY --from=builder \/etc\/ssl\/certs\/ca-certificates.crt \/etc\/ssl\/certs\/ca-certificates.crt *$/) {
                        print "# (/etc/ssl/certs/ca-certificates.crt: in the base)" > out
                        continue
                    }
                    if (match(j, /^ *COPY --from=builder \/out\/ [^ ]+ *$/)) {
                        dest = j; sub(/^ *COPY --from=builder \/out\/ /, "", dest); sub(/ +$/, "", dest)
                        print "COPY bin/ " dest > out
                        continue
                    }
                    fail("cannot carry over: " j)
                }
                t = instruction[i]
                if (j ~ /^ *LABEL /) {
                    if (!sub(/org\.opencontainers\.image\.base\.name="[^"]*"/, "org.opencontainers.image.base.name=\"BASE_REF\"", t))
                        fail("no org.opencontainers.image.base.name label")
                }
                printf "%s", t > out
            }
            if (packages == "") fail("no apt-get install step in the runtime stage")
            print release
            print packages
        }
    ' "$containerfile"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{ read -r release; read -r packages; } < <(read_containerfile "$work/Containerfile") ||
    die "cannot read $containerfile"
[[ -n $release && -n $packages ]] || die "cannot read the release and packages from $containerfile"

# The base recipe. Everything that decides the base's content is in these
# options, and their hash names the cached tarball.
# shellcheck disable=SC2016 # "$1" in the hooks is mmdebstrap's: the root being made
mm_options=(
    --variant=minbase
    "--include=$packages ca-certificates"
    --aptopt='Acquire::Languages "none"'
    # What Debian's -slim images leave out; copyright files stay.
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/groff/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/linda/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    # The CA bundle without the ca-certificates package, which pulls in
    # openssl: what the Containerfile's runtime stage gets from its builder.
    --customize-hook='cp "$1/etc/ssl/certs/ca-certificates.crt" "$1/root/ca-bundle.crt"'
    --customize-hook='chroot "$1" apt-get purge -y -qq --autoremove ca-certificates >/dev/null'
    --customize-hook='install -D -m 0644 "$1/root/ca-bundle.crt" "$1/etc/ssl/certs/ca-certificates.crt" && rm "$1/root/ca-bundle.crt"'
)
recipe=$(printf '%s\n' "$release" "${mm_options[@]}")
base_key=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
base_ref=localhost/wireseal-base:$release-$base_key
sed -i "s|BASE_REF|$base_ref|g" "$work/Containerfile"

if $print_only; then
    echo "# release: $release"
    echo "# packages: $packages"
    echo "# base: $base_ref, made by: mmdebstrap $release with"
    printf '#   %s\n' "${mm_options[@]}"
    cat "$work/Containerfile"
    exit 0
fi

if [[ -n ${CONTAINER_ENGINE:-} ]]; then
    engine=$CONTAINER_ENGINE
elif command -v docker >/dev/null; then
    engine=docker
elif command -v podman >/dev/null; then
    engine=podman
else
    die "neither docker nor podman found (set CONTAINER_ENGINE)"
fi
"$engine" info >/dev/null 2>&1 || die "$engine cannot reach its engine ($engine info failed)"

for binary in wireseal wireseal-tunnel; do
    [[ -x $bin_dir/$binary ]] ||
        die "$bin_dir/$binary not found: cargo build --release --locked -p wireseal -p wireseal-tunnel --bins (or --bin-dir)"
done

mkdir -p "$cache/built"
# One build at a time per cache: tests and CI may call this concurrently.
exec 9>"$cache/lock"
flock 9

base_tar=$cache/base-$release-$base_key.tar
if $refresh_base || [[ ! -s $base_tar ]]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install --no-install-recommends mmdebstrap"
    echo "$me: making the $release base with mmdebstrap from $mirror (cached in $base_tar)" >&2
    mmdebstrap --quiet --format=tar "${mm_options[@]}" "$release" "$base_tar.tmp" "$mirror" ||
        die "mmdebstrap failed (it needs root and the Debian mirror $mirror)"
    mv "$base_tar.tmp" "$base_tar"
    find "$cache" -maxdepth 1 -name "base-*.tar" ! -name "${base_tar##*/}" -delete
    refresh_base=true
fi
if $refresh_base || ! "$engine" image inspect "$base_ref" >/dev/null 2>&1; then
    "$engine" import --change "ENV PATH=$debian_path" "$base_tar" "$base_ref" >/dev/null
fi
base_id=$("$engine" image inspect --format '{{.Id}}' "$base_ref")

# Skipped when nothing that goes into the image changed since the last build
# of this tag (the lab calls this before every run).
inputs=$( (
    echo "$base_id"
    cat "$work/Containerfile"
    cd "$repo/deploy/image"
    sha256sum "$bin_dir/wireseal" "$bin_dir/wireseal-tunnel" tunnel-entrypoint.sh install-binaries.sh
    stat -c '%a %n' tunnel-entrypoint.sh
) | sha256sum | cut -c1-64)
stamp=$cache/built/$(printf '%s' "$tag" | tr '/:' '__')
if [[ -f $stamp ]] && read -r stamped_inputs stamped_id <"$stamp" &&
    [[ $stamped_inputs == "$inputs" ]] &&
    [[ $("$engine" image inspect --format '{{.Id}}' "$tag" 2>/dev/null) == "$stamped_id" ]]; then
    echo "$me: $tag is up to date ($stamped_id)" >&2
else
    # The build context holds only what the generated Containerfile copies,
    # at the paths it names (the entry point at its path in the repository).
    context=$work/context
    mkdir -p "$context/deploy/image"
    cp "$work/Containerfile" "$context/Containerfile"
    # As the Containerfile's builder stage installs them (line tables compressed).
    "$repo/deploy/image/install-binaries.sh" "$bin_dir" "$context/bin"
    cp -p "$repo/deploy/image/tunnel-entrypoint.sh" "$context/deploy/image/"
    previous=$("$engine" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    "$engine" build --quiet --tag "$tag" --file "$context/Containerfile" "$context" >/dev/null
    built=$("$engine" image inspect --format '{{.Id}}' "$tag")
    echo "$inputs $built" >"$stamp"
    # The image this tag named before, now untagged: removed, unless a
    # container or another tag still uses it (then the engine refuses).
    if [[ -n $previous && $previous != "$built" ]]; then
        "$engine" image rm "$previous" >/dev/null 2>&1 || true
    fi
fi

size=$("$engine" image inspect --format '{{.Size}}' "$tag")
base_size=$("$engine" image inspect --format '{{.Size}}' "$base_ref")
echo "$me: $tag: $((size / 1000000)) MB ($((base_size / 1000000)) MB of it the $release base $base_ref)" >&2
