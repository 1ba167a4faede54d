# Sourced by the benchmark scripts: ensure_llama_venv VENV PACKAGE installs PACKAGE (a
# llama-cpp-python requirement) into the throwaway venv VENV unless it imports already.
# llama.cpp is a benchmark baseline only, never a dependency of the project.
ensure_llama_venv() {
    local venv=$1 package=$2 module
    case $package in
        *'[server]'*) module=llama_cpp.server ;;
        *) module=llama_cpp ;;
    esac
    "$venv/bin/python" -c "import $module" 2>/dev/null && return 0
    python3 -m venv "$venv"
    # Built from source for this CPU. ggml's AMX kernels crash in this VM, so they are off.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
-DGGML_AVX512_BF16=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF" \
        "$venv/bin/pip" install --quiet "$package"
}
