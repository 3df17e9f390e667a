/* The runc baseline for CPU shares: a static process that never sleeps. */
int main(void) {
  for (volatile unsigned long i = 0;; i++) {
  }
}
