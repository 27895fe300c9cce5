# provision/lib/cloud-digitalocean.sh: the DigitalOcean API v2 adapter for provision/cloud.
# Owns the DigitalOcean request shapes: POST /droplets with names[] (at most 10 per
# request, user_data plain text), GET /droplets?tag_name=&per_page=&page= (page pagination
# via links.pages.next), DELETE /droplets?tag_name= and DELETE /droplets/{id}. Sourced by
# provision/cloud, never run on its own.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are read by provision/cloud

# DigitalOcean creates at most ten Droplets per request.
DIGITALOCEAN_BATCH=10

digitalocean_setup() {
    PROVIDER_NAME=DigitalOcean
    TOKEN_VAR=DIGITALOCEAN_TOKEN
    URL_VAR=VANTAGE_DIGITALOCEAN_API_URL
    DEFAULT_URL=https://api.digitalocean.com/v2
    # The smallest Droplet (1 vCPU, 512 MB) and the Debian 12 image slug.
    DEFAULT_SIZE=s-1vcpu-512mb-10gb
    DEFAULT_IMAGE=debian-12-x64
    # "It must be plain text and may not exceed 64 KiB in size."
    USER_DATA_LIMIT=65536
    USER_DATA_TEXT=1
    ERROR_JQ='if (.message // "") != "" then .message + (if (.id // "") != "" then " (" + .id + ")" else "" end) else empty end'
    ID_RE='^[0-9]{1,20}$'
    DELETE_TEMPLATE='/droplets/<id>'
    TAG_WORD=tag
}

digitalocean_create() {
    local start end batch
    local -a chunk=()
    for ((start = 0; start < ${#NAMES[@]}; start += DIGITALOCEAN_BATCH)); do
        chunk=("${NAMES[@]:start:DIGITALOCEAN_BATCH}")
        end=$((start + ${#chunk[@]}))
        batch=$(printf '%s\n' "${chunk[@]}" | jq -R . | jq -cs .)
        jq -n \
            --argjson names "$batch" \
            --arg region "$REGION" \
            --arg size "$SIZE" \
            --arg image "$IMAGE" \
            --arg tag "$TAG" \
            --rawfile user_data "$USER_DATA" \
            '{names: $names, region: $region, size: $size, image: $image,
              user_data: $user_data, tags: [$tag], ipv6: true}' >"$WORK/body.json"
        api_request POST "$BASE_URL/droplets" "$WORK/body.json"
        if [ "$DRY_RUN" = 1 ]; then
            continue
        fi
        response_json
        jq -r "$JQ_CELLS"' (.droplets // [.droplet]) | .[] | [.id, .name, .region.slug,
            ((.networks.v4 // []) | map(select(.type == "public")) | .[0].ip_address),
            .status] | cells' "$WORK/response" >>"$WORK/rows.tsv"
        CREATED=$end
        ON_FAIL_HINT="$CREATED of ${#NAMES[@]} Droplets were requested before the failure; remove them with: $PROG digitalocean destroy --tag $TAG"
    done
}

digitalocean_list() {
    local page=0 next
    local -a pages=()
    while :; do
        page=$((page + 1))
        local query="per_page=200&page=$page"
        if [ -n "$TAG" ]; then
            query+="&tag_name=$(uri "$TAG")"
        fi
        api_request GET "$BASE_URL/droplets?$query"
        if [ "$DRY_RUN" = 1 ]; then
            printf '# then the same request with page=2, 3, ... while links.pages.next is set\n\n'
            return 0
        fi
        response_json
        jq '.droplets // []' "$WORK/response" >"$WORK/page.$page.json"
        pages+=("$WORK/page.$page.json")
        next=$(jq -r '.links.pages.next // ""' "$WORK/response")
        if [ -z "$next" ]; then
            break
        fi
        if [ "$page" -ge "$MAX_PAGES" ]; then
            die "DigitalOcean kept answering with a next page after $MAX_PAGES pages; giving up"
        fi
    done
    jq -s 'add // []' "${pages[@]}" >"$WORK/items.json"
}

digitalocean_rows() {
    jq -r "$JQ_CELLS"' .[] | [.id, .name, .region.slug,
        ((.networks.v4 // []) | map(select(.type == "public")) | .[0].ip_address),
        .status] | cells' "$WORK/items.json"
}

digitalocean_id_name() {
    jq -r "$JQ_CELLS"' .[] | [.id, .name] | cells' "$WORK/items.json"
}

digitalocean_destroy_id() {
    api_request DELETE "$BASE_URL/droplets/$(uri "$1")"
}

# DigitalOcean deletes every Droplet with a tag in one documented request (204).
digitalocean_destroy_tag() {
    api_request DELETE "$BASE_URL/droplets?tag_name=$(uri "$TAG")"
    if [ "$DRY_RUN" = 1 ]; then
        return 0
    fi
    printf 'destroyed every Droplet tagged %s\n' "$TAG"
}
