/* A minimal module data type for the tests (tests/python/test_migration.py): keys of a type no
 * built-in command reads, which the mover must carry by DUMP/RESTORE (the type's rdb_save and
 * rdb_load) and which replicas and the AOF must reproduce. Not part of the product.
 *
 *   UMTYPE.SET key value   stores value as a key of type "umtype-v1" (replaces the key)
 *   UMTYPE.GET key         the value, nil if the key does not exist
 *
 * Built by the tests' conftest with `cc -shared -fPIC` against the redismodule.h that the
 * redis-module crate (a dependency of umcluster) ships. */

#include <stddef.h>

#include "redismodule.h"

static RedisModuleType *UmType;

typedef struct {
    RedisModuleString *value;
} UmValue;

static UmValue *um_new(RedisModuleString *value) {
    UmValue *v = RedisModule_Alloc(sizeof(*v));
    v->value = value;
    return v;
}

static void *um_rdb_load(RedisModuleIO *rdb, int encver) {
    if (encver != 0) return NULL;
    return um_new(RedisModule_LoadString(rdb));
}

static void um_rdb_save(RedisModuleIO *rdb, void *value) {
    RedisModule_SaveString(rdb, ((UmValue *)value)->value);
}

static void um_aof_rewrite(RedisModuleIO *aof, RedisModuleString *key, void *value) {
    RedisModule_EmitAOF(aof, "UMTYPE.SET", "ss", key, ((UmValue *)value)->value);
}

static size_t um_mem_usage(const void *value) {
    size_t len;
    RedisModule_StringPtrLen(((const UmValue *)value)->value, &len);
    return sizeof(UmValue) + len;
}

static void um_digest(RedisModuleDigest *md, void *value) {
    size_t len;
    const char *p = RedisModule_StringPtrLen(((UmValue *)value)->value, &len);
    RedisModule_DigestAddStringBuffer(md, (const char *)p, len);
    RedisModule_DigestEndSequence(md);
}

static void um_free(void *value) {
    UmValue *v = value;
    RedisModule_FreeString(NULL, v->value);
    RedisModule_Free(v);
}

static int wrong_type(RedisModuleKey *key) {
    return RedisModule_KeyType(key) != REDISMODULE_KEYTYPE_EMPTY &&
           RedisModule_ModuleTypeGetType(key) != UmType;
}

static int set_command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 3) return RedisModule_WrongArity(ctx);
    RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE);
    if (wrong_type(key)) {
        RedisModule_CloseKey(key);
        return RedisModule_ReplyWithError(ctx, REDISMODULE_ERRORMSG_WRONGTYPE);
    }
    RedisModule_ModuleTypeSetValue(key, UmType, um_new(RedisModule_CreateStringFromString(NULL, argv[2])));
    RedisModule_CloseKey(key);
    RedisModule_ReplicateVerbatim(ctx);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

static int get_command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 2) return RedisModule_WrongArity(ctx);
    RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ);
    int reply;
    if (RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_EMPTY) {
        reply = RedisModule_ReplyWithNull(ctx);
    } else if (wrong_type(key)) {
        reply = RedisModule_ReplyWithError(ctx, REDISMODULE_ERRORMSG_WRONGTYPE);
    } else {
        reply = RedisModule_ReplyWithString(ctx, ((UmValue *)RedisModule_ModuleTypeGetValue(key))->value);
    }
    RedisModule_CloseKey(key);
    return reply;
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    if (RedisModule_Init(ctx, "umtype", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR) {
        return REDISMODULE_ERR;
    }
    RedisModuleTypeMethods methods = {
        .version = REDISMODULE_TYPE_METHOD_VERSION,
        .rdb_load = um_rdb_load,
        .rdb_save = um_rdb_save,
        .aof_rewrite = um_aof_rewrite,
        .mem_usage = um_mem_usage,
        .digest = um_digest,
        .free = um_free,
    };
    UmType = RedisModule_CreateDataType(ctx, "umtype-v1", 0, &methods);
    if (UmType == NULL) return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "umtype.set", set_command, "write deny-oom", 1, 1, 1) ==
            REDISMODULE_ERR ||
        RedisModule_CreateCommand(ctx, "umtype.get", get_command, "readonly", 1, 1, 1) ==
            REDISMODULE_ERR) {
        return REDISMODULE_ERR;
    }
    return REDISMODULE_OK;
}
