# provision/lib/cloud-hetzner.sh: the Hetzner Cloud API v1 adapter for provision/cloud.
# Owns the Hetzner request shapes: POST /servers (one server per request, user_data plain
# text, labels instead of tags: vantage=<tag>, vantage-region=<region>),
# GET /servers?label_selector=&per_page=&page= (page pagination via
# meta.pagination.next_page), DELETE /servers/{id}. Sourced by provision/cloud, never run
# on its own.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are read by provision/cloud

hetzner_setup() {
    PROVIDER_NAME="Hetzner Cloud"
    TOKEN_VAR=HCLOUD_TOKEN
    URL_VAR=VANTAGE_HCLOUD_API_URL
    DEFAULT_URL=https://api.hetzner.cloud/v1
    # cx23: the smallest shared x86 server type (2 vCPU, 4 GB) in the EU locations; the US
    # and Singapore locations offer other types (pass --size, e.g. cpx11 or cpx12).
    DEFAULT_SIZE=cx23
    DEFAULT_IMAGE=debian-12
    # "Cloud-Init user data to use during Server creation. This field is limited to 32KiB."
    USER_DATA_LIMIT=32768
    USER_DATA_TEXT=1
    ERROR_JQ='.error | if (.message // "") != "" then .message + (if (.code // "") != "" then " (" + .code + ")" else "" end) else empty end'
    ID_RE='^[0-9]{1,20}$'
    DELETE_TEMPLATE='/servers/<id>'
    TAG_WORD=label
}

hetzner_create() {
    local name
    for name in "${NAMES[@]}"; do
        jq -n \
            --arg name "$name" \
            --arg server_type "$SIZE" \
            --arg image "$IMAGE" \
            --arg location "$REGION" \
            --arg tag "$TAG" \
            --rawfile user_data "$USER_DATA" \
            '{name: $name, server_type: $server_type, image: $image, location: $location,
              user_data: $user_data, labels: {vantage: $tag, "vantage-region": $location},
              start_after_create: true}' >"$WORK/body.json"
        api_request POST "$BASE_URL/servers" "$WORK/body.json"
        if [ "$DRY_RUN" = 1 ]; then
            continue
        fi
        response_json
        # The answer may carry a root_password: only these fields are ever printed.
        jq -r "$JQ_CELLS"' .server | [.id, .name, .datacenter.location.name,
            .public_net.ipv4.ip, .status] | cells' "$WORK/response" >>"$WORK/rows.tsv"
        CREATED=$((CREATED + 1))
        ON_FAIL_HINT="$CREATED of ${#NAMES[@]} servers were created before the failure; remove them with: $PROG hetzner destroy --tag $TAG"
    done
}

hetzner_list() {
    local page=1 next
    local -a pages=()
    while :; do
        local query="per_page=50&page=$page"
        if [ -n "$TAG" ]; then
            query+="&label_selector=$(uri "vantage=$TAG")"
        fi
        api_request GET "$BASE_URL/servers?$query"
        if [ "$DRY_RUN" = 1 ]; then
            printf '# then the same request with page=<meta.pagination.next_page> while it is set\n\n'
            return 0
        fi
        response_json
        jq '.servers // []' "$WORK/response" >"$WORK/page.$page.json"
        pages+=("$WORK/page.$page.json")
        next=$(jq -r '.meta.pagination.next_page // ""' "$WORK/response")
        if [ -z "$next" ]; then
            break
        fi
        if ! [[ $next =~ ^[0-9]+$ ]] || [ "$next" -le "$page" ]; then
            die "Hetzner Cloud answered with a next page that does not follow page $page"
        fi
        if [ "${#pages[@]}" -ge "$MAX_PAGES" ]; then
            die "Hetzner Cloud kept answering with a next page after $MAX_PAGES pages; giving up"
        fi
        page=$next
    done
    jq -s 'add // []' "${pages[@]}" >"$WORK/items.json"
}

hetzner_rows() {
    jq -r "$JQ_CELLS"' .[] | [.id, .name, .datacenter.location.name, .public_net.ipv4.ip,
        .status] | cells' "$WORK/items.json"
}

hetzner_id_name() {
    jq -r "$JQ_CELLS"' .[] | [.id, .name] | cells' "$WORK/items.json"
}

hetzner_destroy_id() {
    api_request DELETE "$BASE_URL/servers/$(uri "$1")"
}
